"""The Stable Cascade image codec: images <-> 16-channel semantic latents (and Stage A latents).

``Codec`` bundles the EfficientNet encoder (images -> (B,16,h,w)), Stage B (semantic latent ->
Stage A latents, a diffusion decoder), Stage A (VQGAN f4) and the Previewer:

    codec = Codec.from_pretrained("/path/to/stable-cascade", stage_b="lite", device="cuda", dtype="bf16")
    z = codec.encode(images)                 # (B,3,1024,1024) in [0,1] -> (B,16,24,24)
    x = codec.decode(z, seed=0)              # -> (B,3,1024,1024) in [0,1]
    p = codec.preview(z)                     # -> (B,3,192,192) in [0,1]

Only some models can be loaded: ``Codec.from_pretrained(path, components=("previewer",))`` reads just
the previewer (previews without the 700M–1.5B Stage B); ``("effnet",)`` only encodes.

Decoding follows the official inference notebooks: DDPM, 10 steps, cfg 1.1, cfg_rho 0.7, shift 1,
t 1 -> 0; conditional Stage B inputs ``effnet=latents, clip=pooled CLIP(caption or "")``, unconditional
``effnet=zeros, clip=pooled CLIP("")`` (same key order); the sample is the x0 estimate of the last
step, decoded by Stage A and clamped to [0, 1].

Per-stage dtypes follow :mod:`cascadekit.codec.precision` (Stage A float32; Stage B never float16)
and every stage output is checked for NaN/inf.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cascadekit.codec.diffusion.samplers import SAMPLERS, sample
from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.images import imagenet_normalize, to_batch
from cascadekit.codec.models.effnet import EfficientNetEncoder
from cascadekit.codec.models.previewer import Previewer
from cascadekit.codec.models.stage_a import StageA
from cascadekit.codec.models.stage_b import StageB
from cascadekit.codec.precision import StageDtypes, check_finite, dtype_name, stage_dtypes

if TYPE_CHECKING:
    from cascadekit.codec.weights.sources import WeightSet

__all__ = ["CODEC_COMPONENTS", "Codec", "DECODE_DEFAULTS", "default_image_size", "resize_short_side_tensor"]

#: The models a codec can hold, in load order; ``Codec.from_pretrained(components=...)`` picks a subset.
CODEC_COMPONENTS = ("stage_a", "effnet", "stage_b", "previewer")

#: What each component is for (error messages of a codec loaded without it).
_COMPONENT_USE = {
    "stage_a": "Stage A (decode, encode_stage_a, decode_stage_a)",
    "effnet": "the EfficientNet encoder (encode)",
    "stage_b": "Stage B (decode)",
    "previewer": "the Previewer (preview)",
}

#: Stage B sampling settings of the official inference notebooks.
DECODE_DEFAULTS = {"steps": 10, "guidance": 1.1, "cfg_rho": 0.7, "shift": 1.0, "sampler": "ddpm"}

_PIXELS_PER_LATENT = 128 / 3  # 1024 px per 24 effnet latents (the 42.67 compression of Stage C/B)


def default_image_size(h: int, w: int) -> tuple[int, int]:
    """Image size a (h, w) semantic latent decodes to by default: ``round(h·128/3) × round(w·128/3)`` (24 -> 1024)."""
    return round(h * _PIXELS_PER_LATENT), round(w * _PIXELS_PER_LATENT)


def resize_short_side_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B,3,H,W) -> short side ``size``, antialiased bilinear, long side ``int(size·long/short)``.

    Identical to the official ``torchvision.transforms.functional.resize(x, size, BILINEAR, antialias=True)``
    used before the effnet; computed in float32 (CPU has no half-precision antialias kernel).
    """
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    return F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True).to(x.dtype)


def _chunks(n: int, batch_size: int | None) -> list[slice]:
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    step = n if not batch_size else batch_size
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _progress(total: int, desc: str, enabled: bool | None):
    """A tqdm bar (``enabled=None``: shown only on a terminal) or a no-op stand-in."""
    if enabled is False:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return _NoBar()
    return tqdm(total=total, desc=desc, disable=None if enabled is None else False, leave=False)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _dtype_of(module: nn.Module) -> torch.dtype:
    """The floating dtype a module's parameters are in (inputs are cast to it)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _state_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (sorted keys, shapes, dtypes, bytes): the identity of in-memory weights."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    """SHA-256 of a weights file; for a diffusers folder, of its weights file (and shards, combined)."""
    from cascadekit.codec.weights.io import sha256_file
    from cascadekit.codec.weights.load import diffusers_weights_file

    path = Path(path)
    if path.is_dir():
        path = diffusers_weights_file(path)
    if path.name.endswith(".json"):  # sharded index: hash of the index and every shard, in order
        import json

        shards = sorted(set(json.loads(path.read_text()).get("weight_map", {}).values()))
        h = hashlib.sha256(sha256_file(path).encode())
        for s in shards:
            h.update(sha256_file(path.parent / s).encode())
        return h.hexdigest()
    return sha256_file(path)


class Codec:
    """Stable Cascade image codec (see the module docstring).

    Build it with :meth:`from_pretrained`, or directly from loaded modules (tests, custom setups):
    ``Codec(stage_a, effnet, stage_b, previewer=None, empty_clip=...)``; any module may be None (a
    partial codec: methods that need a missing one raise :class:`InputError`); modules are used as given
    (on ``device``; inputs are cast to each module's own dtype — :meth:`from_pretrained` applies the
    :func:`~cascadekit.codec.precision.stage_dtypes` policy).

    Args:
        stage_a: :class:`StageA` or None; ``latent_scale`` is multiplied into Stage B's latents before
            ``stage_a.decode`` and divided out of ``stage_a.encode`` (1.0 for official weights, whose
            model applies 0.43 itself; the VQGAN ``scale_factor`` for a diffusers ``vqgan/``, which is
            built with ``scale_factor=1``, exactly as the diffusers pipeline does).
        effnet: :class:`EfficientNetEncoder` or None (a codec that cannot encode).
        stage_b: :class:`StageB` or None (a codec that cannot decode).
        previewer: :class:`Previewer` or None.
        empty_clip: pooled CLIP embedding of the empty caption, (1, 1, c_clip) or (c_clip,); None
            means unavailable (decode then raises unless ``allow_zero_text``).
        text_encoder: a :class:`cascadekit.codec.text.TextEncoder` (``encode(captions) -> (text, pooled)``),
            needed only for ``captions=``.
        allow_zero_text: use zeros when no empty-caption embedding is available (with a warning).
        encoder_resolution: short side images are resized to before the effnet (official 768).
        device, dtype: where the codec runs and the dtype requested (per-stage dtypes: ``dtypes``).
        files: component -> weights path (for :meth:`identity`); presets: component -> preset name.
    """

    def __init__(
        self,
        stage_a: StageA | None,
        effnet: EfficientNetEncoder | None,
        stage_b: StageB | None = None,
        previewer: Previewer | None = None,
        *,
        latent_scale: float = 1.0,
        empty_clip: torch.Tensor | None = None,
        text_encoder: Any = None,
        allow_zero_text: bool = False,
        encoder_resolution: int = 768,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
        files: dict[str, Path] | None = None,
        presets: dict[str, str] | None = None,
        tiny: bool = False,
        empty_clip_missing: str | None = None,
    ):
        if encoder_resolution < 32:
            raise InputError(f"encoder_resolution must be >= 32 (the effnet stride), got {encoder_resolution}")
        self.device = torch.device(device)
        self.dtypes: StageDtypes = stage_dtypes(dtype, self.device)
        frozen = lambda m: m.eval().requires_grad_(False) if m is not None else None  # noqa: E731
        self.stage_a: StageA | None = frozen(stage_a)
        self.effnet: EfficientNetEncoder | None = frozen(effnet)
        self.stage_b: StageB | None = frozen(stage_b)
        self.previewer: Previewer | None = frozen(previewer)
        self.latent_scale = float(latent_scale)
        self.encoder_resolution = int(encoder_resolution)
        self.text_encoder = text_encoder
        self.allow_zero_text = allow_zero_text
        self.files = {k: Path(v) for k, v in (files or {}).items()}
        self.presets = dict(presets or {})
        self.tiny = tiny
        self.empty_clip = None
        self._empty_clip_missing = empty_clip_missing
        if empty_clip is not None:
            self.empty_clip = self._check_clip(empty_clip, "empty_clip").to(self.device)
        self._identity: dict | None = None

    # ------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike | Sequence[str | os.PathLike] | WeightSet,
        stage_b: str = "lite",
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
        encoder_resolution: int = 768,
        text_encoder: Any = None,
        allow_zero_text: bool = False,
        previewer: bool = True,
        components: Sequence[str] | None = None,
    ) -> "Codec":
        """Load the codec from a weights folder, a diffusers snapshot, or a hub id.

        ``source`` is resolved by :func:`cascadekit.codec.weights.sources.resolve_source` (official
        files, diffusers ``vqgan/`` + ``decoder[_lite]/``, the tiny random set, ...); a
        :class:`~cascadekit.codec.weights.sources.WeightSet` that is already resolved is used as is
        (``stage_b`` is then the variant it was resolved with). Each model is
        created on the meta device and the file's tensors are assigned to it
        (:func:`cascadekit.codec.weights.assign.build`): nothing is randomly initialised and the
        weights are never held twice. ``stage_b``: ``'lite'`` (700M) or ``'big'`` (1.5B).
        ``dtype``: ``fp32``/``bf16``/``fp16`` (per-stage policy in :mod:`cascadekit.codec.precision`).
        The empty-caption CLIP embedding is read from its cache beside the weights, or computed once
        with the weights' ``text_encoder/`` and cached (:func:`cascadekit.codec.text.empty_caption_embeddings`);
        when neither exists, :meth:`decode` raises a clear error unless ``allow_zero_text=True``.
        ``text_encoder`` (a ``TextEncoder``, a folder / hub id to load one from, or ``True`` = the one in
        the weights) is needed for ``decode(captions=...)``. The previewer is loaded when its file is
        found (``previewer=False`` skips it); :meth:`preview` raises without it.

        ``components``: load only these models, from ``"stage_a"``, ``"effnet"``, ``"stage_b"``,
        ``"previewer"`` (default None: the first three, which must exist, plus the previewer when
        found). Only the listed ones must exist (a listed previewer is required); the others are not
        read and stay None, and methods that need them raise :class:`InputError` — e.g.
        ``components=("previewer",)`` for :meth:`preview` only, ``("effnet",)`` for :meth:`encode`
        only. The empty-caption embedding (and ``text_encoder``) matter only with Stage B.
        """
        from cascadekit.codec.weights.components import load_component
        from cascadekit.codec.weights.sources import WeightSet, resolve_source

        if components is None:
            load_set = set(CODEC_COMPONENTS) if previewer else set(CODEC_COMPONENTS[:3])
            need = CODEC_COMPONENTS[:3]  # the previewer is optional (diffusers has none)
        else:
            if isinstance(components, str):
                components = (components,)
            load_set = set(components)
            unknown = sorted(load_set - set(CODEC_COMPONENTS))
            if unknown or not load_set:
                raise InputError(f"components must be a non-empty subset of {CODEC_COMPONENTS}, got {tuple(components)}")
            if "previewer" in load_set and not previewer:
                raise InputError("components lists 'previewer' but previewer=False; drop one of them")
            need = tuple(c for c in CODEC_COMPONENTS if c in load_set)
        device = torch.device(device)
        dts = stage_dtypes(dtype, device)
        if isinstance(source, WeightSet):  # resolved by the caller (e.g. the text-to-image pipeline)
            ws = source
            for c in need:
                ws.path(c)  # a WeightsError naming a required component it lacks
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tiny-weights warning is re-issued below, once
                ws = resolve_source(source, stage_b=stage_b, need=need)
        if ws.tiny:
            warnings.warn(f"{ws.weights_dir}: {ws.warning}", stacklevel=2)
        if "stage_b" in load_set and dts.stage_b != dts.requested:
            warnings.warn(
                f"dtype={dtype_name(dts.requested)} requested: Stage B runs in {dtype_name(dts.stage_b)} instead "
                "(it overflows in float16; see cascadekit.codec.precision)", stacklevel=2)

        presets: dict[str, str] = {}

        def load(component, dt):
            model, presets[component] = load_component(ws, component, device=device, dtype=dt)
            return model

        # a component is loaded when asked for and found (the required ones were checked by resolve_source)
        loaded = [c for c in CODEC_COMPONENTS if c in load_set and getattr(ws, c) is not None]
        models = {c: load(c, getattr(dts, c)) for c in loaded}
        sa, eff, sb, pv = (models.get(c) for c in CODEC_COMPONENTS)
        if sa is not None and not ws.scale_in_model and "stage_a" not in ws.model_kwargs:
            sa.scale_factor = 1.0  # defensive: diffusers always has kwargs

        empty, why = None, None
        if sb is not None:
            if isinstance(text_encoder, (str, os.PathLike)) or text_encoder is True:
                from cascadekit.codec.text import TextEncoder

                text_encoder = TextEncoder.from_pretrained(ws if text_encoder is True else text_encoder, device=device)
            empty, why = _load_empty_clip(ws, sb.clip_mapper.in_features, text_encoder)
        files = {c: ws.path(c) for c in loaded}
        return cls(
            sa, eff, sb, pv,
            latent_scale=ws.outside_scale,
            empty_clip=empty,
            text_encoder=text_encoder,
            allow_zero_text=allow_zero_text,
            encoder_resolution=encoder_resolution,
            device=device,
            dtype=dts.requested,
            empty_clip_missing=why,
            files=files,
            presets=presets,
            tiny=ws.tiny,
        )

    # ------------------------------------------------------------------------------------ helpers

    @property
    def dtype(self) -> torch.dtype:
        """The dtype that was requested (see ``dtypes`` for what each stage runs in)."""
        return self.dtypes.requested

    @property
    def stage_b_unit(self) -> int:
        """Stage B latent sizes are multiples of this: patch size × 2^(levels−1) (16 for the released models)."""
        sb = self._require_stage_b()
        return int(sb.embedding[0].downscale_factor) * 2 ** (len(sb.down_downscalers) - 1)

    @property
    def components(self) -> tuple[str, ...]:
        """The models this codec holds, from ``("stage_a", "effnet", "stage_b", "previewer")``."""
        return tuple(c for c in CODEC_COMPONENTS if getattr(self, c) is not None)

    def _require(self, *names: str) -> None:
        """:class:`InputError` naming every model in ``names`` this codec was loaded without, and how to load it."""
        missing = [c for c in names if getattr(self, c) is None]
        if not missing:
            return
        what = "; ".join(_COMPONENT_USE[c] for c in missing)
        have = list(self.components)
        raise InputError(
            f"this codec has no {', '.join(missing)}, which this needs ({what}): it was not loaded or its weights "
            f"were not found. It holds {have or 'no models'}; load what is needed with "
            f"Codec.from_pretrained(..., components={tuple(c for c in CODEC_COMPONENTS if c in have + missing)!r}) "
            "(components=None: all of them)"
        )

    def _require_stage_b(self) -> StageB:
        self._require("stage_b")
        return self.stage_b

    def _check_clip(self, clip: torch.Tensor, what: str) -> torch.Tensor:
        clip = clip.detach().float()
        if clip.dim() == 1:
            clip = clip.view(1, 1, -1)
        elif clip.dim() == 2:
            clip = clip.unsqueeze(1)
        if clip.dim() != 3 or clip.shape[1] != 1:
            raise InputError(f"{what} must be a pooled CLIP embedding (B,1,C), (B,C) or (C,), got {tuple(clip.shape)}")
        if self.stage_b is not None and clip.shape[-1] != self.stage_b.clip_mapper.in_features:
            raise InputError(
                f"{what} has {clip.shape[-1]} channels but Stage B expects {self.stage_b.clip_mapper.in_features}"
            )
        return clip

    def _empty_pooled(self, batch: int) -> torch.Tensor:
        """(batch, 1, c_clip) empty-caption pooled embedding (or zeros when allowed)."""
        sb = self._require_stage_b()
        if self.empty_clip is None:
            if not self.allow_zero_text:
                detail = f" ({self._empty_clip_missing})" if self._empty_clip_missing else ""
                raise WeightsError(
                    "cannot decode: the pooled CLIP embedding of the empty caption is not available, and Stage B's "
                    "conditional and unconditional inputs need it. Put a CLIP ViT-bigG text_encoder/ + tokenizer/ "
                    "beside the weights (it is computed and cached once as empty_caption.safetensors), pass "
                    "text_encoder= to Codec.from_pretrained, or pass allow_zero_text=True to use zeros "
                    f"(lower quality).{detail}"
                )
            warnings.warn(
                "no empty-caption CLIP embedding available: decoding with a zero text embedding "
                "(allow_zero_text=True); reconstructions are slightly worse than the official pipeline's",
                stacklevel=3,
            )
            self.empty_clip = torch.zeros(1, 1, sb.clip_mapper.in_features, device=self.device)
        return self.empty_clip.expand(batch, -1, -1)

    def _caption_pooled(self, captions: Sequence[str] | None, batch: int) -> torch.Tensor:
        if captions is None:
            return self._empty_pooled(batch)
        if isinstance(captions, str):
            captions = [captions] * batch
        captions = list(captions)
        if len(captions) != batch:
            raise InputError(f"got {len(captions)} captions for {batch} latents; give one per latent (or one string)")
        if self.text_encoder is None:
            raise InputError(
                "captions were given but the codec has no text encoder; pass text_encoder= to Codec.from_pretrained "
                "(a cascadekit.codec.text.TextEncoder)"
            )
        pooled = _pooled_from_text_encoder(self.text_encoder, captions)
        return self._check_clip(pooled, "the text encoder's pooled output").to(self.device)

    def _images(self, images) -> torch.Tensor:
        return to_batch(images)  # (B,3,H,W) float32 in [0,1], validated

    @staticmethod
    def _latents(latents: torch.Tensor, channels: int, what: str) -> torch.Tensor:
        if not isinstance(latents, torch.Tensor):
            raise InputError(f"{what} must be a tensor (B,{channels},h,w), got {type(latents).__name__}")
        if latents.dim() == 3:
            latents = latents.unsqueeze(0)
        if latents.dim() != 4 or latents.shape[1] != channels:
            raise InputError(f"{what} must have shape (B,{channels},h,w), got {tuple(latents.shape)}")
        if not latents.is_floating_point():
            raise InputError(f"{what} must be floating point, got {latents.dtype}")
        if not bool(torch.isfinite(latents).all()):
            raise InputError(f"{what} contain NaN or inf")
        return latents

    # ------------------------------------------------------------------------------------ encode

    @torch.inference_mode()
    def encode(self, images, *, batch_size: int | None = None, progress: bool | None = None) -> torch.Tensor:
        """Images -> semantic latents.

        Args:
            images: float tensor (B,3,H,W) / (3,H,W) in [0, 1], a PIL image, or a list of same-size
                PIL images / tensors.
        Returns:
            float32 latents (B, 16, h, w) on the codec's device, h = H'/32 where the image is first
            resized so its short side is ``encoder_resolution`` (1024² -> 24×24 at 768).
        """
        self._require("effnet")
        x = self._images(images)
        out = []
        parts = _chunks(x.shape[0], batch_size)
        bar = _progress(len(parts), "encode", progress if len(parts) > 1 else False)
        for sl in parts:
            xb = x[sl].to(self.device)
            xb = resize_short_side_tensor(xb, self.encoder_resolution)
            dt = _dtype_of(self.effnet)
            z = self.effnet(imagenet_normalize(xb).to(dt))
            check_finite(z, "the EfficientNet encoder", dt)
            out.append(z.float())
            bar.update()
        bar.close()
        return torch.cat(out)

    # ------------------------------------------------------------------------------------ decode

    def _noise_for(self, batch: int, shape: tuple[int, ...], steps: int, generator: torch.Generator | None
                   ) -> Callable[[slice], tuple[torch.Tensor, list[torch.Tensor]]]:
        """Per-sample start noise and per-step noise, independent of how the batch is chunked.

        Sample i draws from its own CPU generator seeded from ``generator`` (one 62-bit seed per
        sample, drawn in order), so a seed gives the same noise for sample i with any ``batch_size``
        and on any device. Without a generator the global RNG is used.
        """
        if generator is None:
            def draw(sl: slice):
                n = sl.stop - sl.start
                x_init = torch.randn((n, *shape))
                return x_init, [torch.randn((n, *shape)) for _ in range(steps)]
            return draw
        seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=generator.device).tolist()

        def draw(sl: slice):
            xs, ns = [], []
            for s in seeds[sl]:
                g = torch.Generator("cpu").manual_seed(int(s))
                xs.append(torch.randn((1, *shape), generator=g))
                ns.append([torch.randn((1, *shape), generator=g) for _ in range(steps)])
            return torch.cat(xs), [torch.cat([n[i] for n in ns]) for i in range(steps)]

        return draw

    def stage_b_latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Stage A latent size Stage B samples for an image of ``size`` (H, W): H/4 rounded to the nearest
        multiple of :attr:`stage_b_unit` (at least one unit) — 256×256 for 1024², 192×288 for 768×1152.

        Stage B halves the resolution at every level, so other sizes would be resampled inside the
        network; decoding at the nearest clean size and resizing the image is cleaner.
        """
        u = self.stage_b_unit
        return tuple(max(u, round(s / 4 / u) * u) for s in size)  # type: ignore[return-value]

    @torch.inference_mode()
    def decode(
        self,
        latents: torch.Tensor,
        steps: int = 10,
        guidance: float | None = 1.1,
        seed: int | None = None,
        size: int | tuple[int, int] | None = None,
        captions: str | Sequence[str] | None = None,
        shift: float = 1.0,
        cfg_rho: float = 0.7,
        sampler: str = "ddpm",
        generator: torch.Generator | None = None,
        noise: Sequence[torch.Tensor] | None = None,
        x_init: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Semantic latents (B,16,h,w) -> images (B,3,H,W) in [0, 1] (Stage B sampling, then Stage A).

        Args:
            latents: (B,16,h,w) from :meth:`encode` (or Stage C).
            steps, guidance, shift, cfg_rho, sampler: Stage B sampling (official: 10, 1.1, 1, 0.7,
                'ddpm'); ``guidance=None`` disables classifier-free guidance.
            seed / generator: reproducible noise (a seed makes a CPU generator). Each sample gets its
                own noise stream, so results do not depend on ``batch_size``... except through the
                official cfg_rho rescale, which uses the std of the **whole batch** (pass the same
                batches, or ``batch_size=1``, to reproduce a result exactly).
            size: output (H, W) (an int = square); default ``round(h·128/3) × round(w·128/3)``. Stage B
                samples :meth:`stage_b_latent_size` ``(size)``; when 4× that differs from ``size`` the
                decoded image is resized to ``size`` (antialiased bilinear).
            captions: one caption per latent (or one string) for Stage B's pooled-CLIP input; needs a
                text encoder. Default: the empty caption, as in the official reconstruction notebook.
            noise, x_init: explicit noise for the whole batch (``x_init`` (B,4,h',w'); ``noise`` one
                (B,4,h',w') tensor per step) instead of drawing it.
            batch_size: decode in chunks of this many latents; progress: tqdm bar (None: on a terminal).
        """
        self._require("stage_b", "stage_a")
        sb = self.stage_b
        z = self._latents(latents, sb.effnet_mapper[0].in_channels, "latents")
        if sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if steps < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        B, _, h, w = z.shape
        if size is None:
            size = default_image_size(h, w)
        elif isinstance(size, int):
            size = (size, size)
        size = (int(size[0]), int(size[1]))
        if min(size) < 1:
            raise InputError(f"size must be positive, got {size}")
        lh, lw = self.stage_b_latent_size(size)
        shape = (sb.embedding[1].in_channels // int(sb.embedding[0].downscale_factor) ** 2, lh, lw)
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(int(seed))
        if noise is not None or x_init is not None:
            if noise is None or x_init is None or len(noise) != steps:
                raise InputError(f"explicit noise needs both x_init (B,{shape[0]},{lh},{lw}) and `noise` with one tensor per step ({steps})")
            for t in [x_init, *noise]:
                if tuple(t.shape) != (B, *shape):
                    raise InputError(f"explicit noise has shape {tuple(t.shape)}, expected {(B, *shape)}")
            draw = lambda sl: (x_init[sl].float().cpu(), [n[sl].float().cpu() for n in noise])  # noqa: E731
        else:
            draw = self._noise_for(B, shape, steps, generator)
        cond_clip = self._caption_pooled(captions, B)  # (B,1,c_clip)
        uncond_clip = self._empty_pooled(B) if guidance is not None else None
        dt_b = _dtype_of(sb)

        def model(x, r, **kw):
            return sb(x, r, **kw).float()

        parts = _chunks(B, batch_size)
        bar = _progress(len(parts) * steps, "decode (Stage B)", progress)
        out = []
        for sl in parts:
            x0_init, step_noise = draw(sl)
            zb = z[sl].to(self.device).float()
            inputs = {"effnet": zb, "clip": cond_clip[sl]}
            uncond = {"effnet": torch.zeros_like(zb), "clip": uncond_clip[sl]} if guidance is not None else None
            last = None
            for i, st in enumerate(sample(
                model, x0_init.to(self.device),
                steps=steps, cfg=guidance, cfg_rho=cfg_rho, shift=shift, sampler=sampler,
                model_inputs=inputs, unconditional_inputs=uncond,
                noise=[t.to(self.device) for t in step_noise],
            )):
                check_finite(st.x0, f"Stage B (sampling step {i + 1}/{steps})", dt_b)
                last = st
                bar.update()
            images = self._stage_a_decode(last.x0)  # (n,3,4lh,4lw)
            if tuple(images.shape[-2:]) != size:
                images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
            out.append(images.clamp(0, 1))
        bar.close()
        return torch.cat(out)

    def _stage_a_decode(self, latents: torch.Tensor) -> torch.Tensor:
        dt = _dtype_of(self.stage_a)
        x = self.stage_a.decode(latents.to(self.device, dt) * self.latent_scale)
        check_finite(x, "Stage A decode", dt)
        return x.float()

    # ------------------------------------------------------------------------------------ others

    @torch.inference_mode()
    def preview(self, latents: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """Semantic latents (B,16,h,w) -> quick previews (B,3,8h,8w) in [0, 1] from the Previewer."""
        self._require("previewer")
        z = self._latents(latents, self.previewer.blocks[0].in_channels, "latents")
        out = []
        for sl in _chunks(z.shape[0], batch_size):
            dt = _dtype_of(self.previewer)
            p = self.previewer(z[sl].to(self.device, dt))
            check_finite(p, "the Previewer", dt)
            out.append(p.float().clamp(0, 1))
        return torch.cat(out)

    @torch.inference_mode()
    def encode_stage_a(self, images, *, batch_size: int | None = None) -> torch.Tensor:
        """Images (B,3,H,W) in [0, 1], H and W multiples of 4 -> Stage A latents (B,4,H/4,W/4).

        Unquantized and divided by the latent scale (official ``StageA.encode(x)[0]``): the space
        Stage B samples in.
        """
        self._require("stage_a")
        x = self._images(images)
        H, W = x.shape[-2:]
        if H % 4 or W % 4:
            raise InputError(f"Stage A needs H and W divisible by 4, got {H}x{W}; crop or resize first")
        out = []
        for sl in _chunks(x.shape[0], batch_size):
            dt = _dtype_of(self.stage_a)
            lat = self.stage_a.encode(x[sl].to(self.device, dt))[0]
            check_finite(lat, "Stage A encode", dt)
            out.append(lat.float() / self.latent_scale)
        return torch.cat(out)

    @torch.inference_mode()
    def decode_stage_a(self, latents: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """Stage A latents (B,4,h,w) -> images (B,3,4h,4w) clamped to [0, 1]."""
        self._require("stage_a")
        z = self._latents(latents, self.stage_a.c_latent, "Stage A latents")
        return torch.cat([self._stage_a_decode(z[sl]).clamp(0, 1) for sl in _chunks(z.shape[0], batch_size)])

    def reconstruct(self, images, seed: int | None = None, **decode_kwargs) -> torch.Tensor:
        """``decode(encode(images), size=(H, W))``: images (B,3,H,W) in [0,1] -> same shape in [0,1].

        ``decode_kwargs`` go to :meth:`decode` (steps, guidance, batch_size, ...).
        """
        self._require("effnet", "stage_b", "stage_a")
        x = self._images(images)
        z = self.encode(x, batch_size=decode_kwargs.get("batch_size"))
        decode_kwargs.setdefault("size", tuple(x.shape[-2:]))
        return self.decode(z, seed=seed, **decode_kwargs)

    def identity(self) -> dict:
        """What produced the latents: sha256 of every checkpoint used, presets, scale, dtypes, resolution.

        Datasets store this as the encoder identity. For modules not loaded from files the sha256 is
        computed over the state dict (``"sha256_of": "state_dict"``). Only the models this codec holds
        are listed; ``stage_a_scale_factor`` is None without Stage A.
        """
        if self._identity is None:
            files = {}
            for name in self.components:
                mod = getattr(self, name)
                if name in self.files:
                    files[name] = {"file": self.files[name].name, "sha256": _file_sha256(self.files[name]),
                                   "sha256_of": "file"}
                else:
                    files[name] = {"file": None, "sha256": _state_sha256(mod), "sha256_of": "state_dict"}
            self._identity = {
                "kind": "cascadekit.codec",
                "checkpoints": files,
                "presets": dict(self.presets),
                "stage_a_scale_factor": (float(self.stage_a.scale_factor) * self.latent_scale
                                         if self.stage_a is not None else None),
                "stage_a_scale_outside_model": self.latent_scale != 1.0,
                "dtype": dtype_name(self.dtype),
                "stage_dtypes": self.dtypes.as_dict(),
                "encoder_resolution": self.encoder_resolution,
                "tiny_random_weights": bool(self.tiny),
            }
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._identity.items()}

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in self.presets.items())
        return (f"Codec({parts or 'custom modules'}, device={self.device}, dtype={dtype_name(self.dtype)}, "
                f"encoder_resolution={self.encoder_resolution}{', TINY RANDOM WEIGHTS' if self.tiny else ''})")


# ---------------------------------------------------------------------------------------- text glue


def _pooled_from_text_encoder(text_encoder: Any, captions: list[str]) -> torch.Tensor:
    """Pooled CLIP embeddings (B,1,C) of ``captions`` from a :class:`cascadekit.codec.text.TextEncoder`
    (``encode(captions) -> (clip_text, clip_text_pooled)``)."""
    encode = getattr(text_encoder, "encode", None)
    if not callable(encode):
        raise InputError(f"text_encoder must be a cascadekit.codec.text.TextEncoder, got {type(text_encoder).__name__}")
    out = encode(captions)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise InputError("text_encoder.encode(captions) must return (clip_text, clip_text_pooled)")
    return out[1]


def _load_empty_clip(ws, c_clip: int, text_encoder: Any) -> tuple[torch.Tensor | None, str | None]:
    """``(pooled (1,1,c_clip), None)`` from the empty-caption cache beside the weights (computed once with
    ``text_encoder`` or the weights' own ``text_encoder/`` when not cached), or ``(None, why)``."""
    from cascadekit.codec.text import empty_caption_embeddings

    try:
        _, pooled = empty_caption_embeddings(ws, text_encoder=text_encoder)
    except WeightsError as e:
        return None, str(e)
    if pooled.shape[-1] != c_clip:
        raise WeightsError(
            f"the empty-caption CLIP embedding has {pooled.shape[-1]} channels but Stage B expects {c_clip}: "
            "the text encoder / cache beside the weights does not belong to this Stage B"
        )
    return pooled.reshape(1, 1, c_clip).float(), None
