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

import os
import types
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cascadekit.codec import codec_load as L
from cascadekit.codec.codec_load import CODEC_COMPONENTS
from cascadekit.codec.codec_text import caption_list, check_pooled, no_empty_clip_error, pooled_from_text_encoder
from cascadekit.codec.decode_noise import explicit_noise, per_sample_noise
from cascadekit.codec.diffusion.samplers import SAMPLERS, sample
from cascadekit.codec.diffusion.settings import SamplingSettings
from cascadekit.codec.errors import InputError
from cascadekit.codec.hashing import file_sha256, state_sha256
from cascadekit.codec.images import imagenet_normalize, to_batch
from cascadekit.codec.models.effnet import EfficientNetEncoder
from cascadekit.codec.models.previewer import Previewer
from cascadekit.codec.models.stage_a import StageA
from cascadekit.codec.models.stage_b import StageB
from cascadekit.codec.precision import StageDtypes, check_finite, dtype_name, stage_dtypes
from cascadekit.codec.progress import progress_bar

if TYPE_CHECKING:
    from cascadekit.codec.weights.sources import WeightSet

__all__ = ["CODEC_COMPONENTS", "Codec", "DECODE_DEFAULTS", "DECODE_SETTINGS", "SamplingSettings",
           "default_image_size", "resize_short_side_tensor"]

#: What each component is for (error messages of a codec loaded without it).
_COMPONENT_USE = {
    "stage_a": "Stage A (decode, encode_stage_a, decode_stage_a)",
    "effnet": "the EfficientNet encoder (encode)",
    "stage_b": "Stage B (decode)",
    "previewer": "the Previewer (preview)",
}

#: Stage B sampling settings of the official inference notebooks: DDPM, 10 steps, cfg 1.1, cfg_rho 0.7,
#: shift 1, t 1 -> 0. ``Codec.decode``'s keyword defaults are read from here.
DECODE_SETTINGS = SamplingSettings(steps=10, cfg=1.1, cfg_rho=0.7, shift=1.0, sampler="ddpm")

#: The same settings under ``Codec.decode``'s keyword names (read-only): steps, guidance, cfg_rho, shift, sampler.
DECODE_DEFAULTS = types.MappingProxyType({
    "steps": DECODE_SETTINGS.steps, "guidance": DECODE_SETTINGS.cfg, "cfg_rho": DECODE_SETTINGS.cfg_rho,
    "shift": DECODE_SETTINGS.shift, "sampler": DECODE_SETTINGS.sampler,
})
_KEYWORD_TO_FIELD = {"steps": "steps", "guidance": "cfg", "cfg_rho": "cfg_rho", "shift": "shift", "sampler": "sampler"}

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


def _dtype_of(module: nn.Module) -> torch.dtype:
    """The floating dtype a module's parameters are in (inputs are cast to it)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _output_size(size: int | tuple[int, int] | None, h: int, w: int) -> tuple[int, int]:
    """decode()'s ``size`` argument as (H, W); None: :func:`default_image_size` of the latents."""
    if size is None:
        size = default_image_size(h, w)
    elif isinstance(size, int):
        size = (size, size)
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise InputError(f"size must be positive, got {size}")
    return size


def _decode_settings(settings: SamplingSettings | None, keywords: dict[str, Any]) -> SamplingSettings:
    """decode()'s sampling settings: ``settings`` as given, or :data:`DECODE_SETTINGS` with the keywords.

    With ``settings``, a keyword that differs from its default is an :class:`InputError` (two sources of
    one value), so a grouped call cannot be silently overridden or ignored.
    """
    if settings is None:
        return DECODE_SETTINGS.replace(**{_KEYWORD_TO_FIELD[k]: v for k, v in keywords.items()})
    if not isinstance(settings, SamplingSettings):
        raise InputError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
    clash = {k: v for k, v in keywords.items() if v != DECODE_DEFAULTS[k]}
    if clash:
        raise InputError(f"give the sampling settings either as settings= or as keywords, not both; got settings= "
                         f"and {', '.join(f'{k}={v!r}' for k, v in clash.items())}")
    return settings


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
        load_set, need = L.select_components(components, previewer)
        device = torch.device(device)
        dts = stage_dtypes(dtype, device)
        ws = L.weight_set_for(source, stage_b, need)
        L.warn_about(ws, load_set, dts, stacklevel=2)
        models, presets = L.load_models(ws, load_set, dts, device)
        sa, eff, sb, pv = (models.get(c) for c in CODEC_COMPONENTS)
        text_encoder, empty, why = L.text_side(ws, sb, text_encoder, device)
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
            files={c: ws.path(c) for c in models},
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
        c_clip = self.stage_b.clip_mapper.in_features if self.stage_b is not None else None
        return check_pooled(clip, what, c_clip)

    def _empty_pooled(self, batch: int) -> torch.Tensor:
        """(batch, 1, c_clip) empty-caption pooled embedding (or zeros when allowed)."""
        sb = self._require_stage_b()
        if self.empty_clip is None:
            if not self.allow_zero_text:
                raise no_empty_clip_error(self._empty_clip_missing)
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
        captions = caption_list(captions, batch)
        if self.text_encoder is None:
            raise InputError(
                "captions were given but the codec has no text encoder; pass text_encoder= to Codec.from_pretrained "
                "(a cascadekit.codec.text.TextEncoder)"
            )
        pooled = pooled_from_text_encoder(self.text_encoder, captions)
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
        bar = progress_bar(len(parts), "encode", progress if len(parts) > 1 else False)
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

    def stage_b_latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Stage A latent size Stage B samples for an image of ``size`` (H, W): H/4 rounded to the nearest
        multiple of :attr:`stage_b_unit` (at least one unit) — 256×256 for 1024², 192×288 for 768×1152.

        Stage B halves the resolution at every level, so other sizes would be resampled inside the
        network; decoding at the nearest clean size and resizing the image is cleaner.
        """
        u = self.stage_b_unit
        return tuple(max(u, round(s / 4 / u) * u) for s in size)  # type: ignore[return-value]

    # over 60 lines: the docstring documents both call forms; the code is ~50 lines
    @torch.inference_mode()
    def decode(
        self,
        latents: torch.Tensor,
        steps: int = DECODE_SETTINGS.steps,
        guidance: float | None = DECODE_SETTINGS.cfg,
        seed: int | None = None,
        size: int | tuple[int, int] | None = None,
        captions: str | Sequence[str] | None = None,
        shift: float = DECODE_SETTINGS.shift,
        cfg_rho: float = DECODE_SETTINGS.cfg_rho,
        sampler: str = DECODE_SETTINGS.sampler,
        generator: torch.Generator | None = None,
        noise: Sequence[torch.Tensor] | None = None,
        x_init: torch.Tensor | None = None,
        *,
        settings: SamplingSettings | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Semantic latents (B,16,h,w) -> images (B,3,H,W) in [0, 1] (Stage B sampling, then Stage A).

        The Stage B sampling settings come in one of two forms::

            codec.decode(z, steps=20, guidance=2.0)                                # keywords
            codec.decode(z, settings=DECODE_SETTINGS.replace(steps=20, cfg=2.0))   # grouped

        Args:
            latents: (B,16,h,w) from :meth:`encode` (or Stage C).
            steps, guidance, shift, cfg_rho, sampler: Stage B sampling (official, :data:`DECODE_SETTINGS`:
                10, 1.1, 1, 0.7, 'ddpm'); ``guidance=None`` disables classifier-free guidance.
            settings: the same as one :class:`~cascadekit.codec.diffusion.settings.SamplingSettings`
                (``cfg`` is the guidance), which also reaches ``t_start`` / ``t_end``, ``eta`` and
                ``cfg_t_stop`` / ``cfg_t_start``. With ``settings``, leave the five keywords at their
                defaults (one that differs is an :class:`InputError`).
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
        st = _decode_settings(settings, {"steps": steps, "guidance": guidance, "shift": shift,
                                         "cfg_rho": cfg_rho, "sampler": sampler})
        self._require("stage_b", "stage_a")
        sb = self.stage_b
        z = self._latents(latents, sb.effnet_mapper[0].in_channels, "latents")
        if st.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {st.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if st.steps < 1:
            raise InputError(f"steps must be >= 1, got {st.steps}")
        B, _, h, w = z.shape
        size = _output_size(size, h, w)
        lh, lw = self.stage_b_latent_size(size)
        shape = (sb.embedding[1].in_channels // int(sb.embedding[0].downscale_factor) ** 2, lh, lw)
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(int(seed))
        if noise is not None or x_init is not None:
            draw = explicit_noise(x_init, noise, st.steps, (B, *shape))
        else:
            draw = per_sample_noise(B, shape, st.steps, generator)
        cond_clip = self._caption_pooled(captions, B)  # (B,1,c_clip)
        uncond_clip = self._empty_pooled(B) if st.cfg is not None else None
        parts = _chunks(B, batch_size)
        bar = progress_bar(len(parts) * st.steps, "decode (Stage B)", progress)
        out = []
        for sl in parts:
            x0 = self._sample_stage_b(z[sl], cond_clip[sl], None if uncond_clip is None else uncond_clip[sl],
                                      draw(sl), st, bar)
            images = self._stage_a_decode(x0)  # (n,3,4lh,4lw)
            if tuple(images.shape[-2:]) != size:
                images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
            out.append(images.clamp(0, 1))
        bar.close()
        return torch.cat(out)

    def _sample_stage_b(self, z: torch.Tensor, cond_clip: torch.Tensor, uncond_clip: torch.Tensor | None,
                        noise: tuple[torch.Tensor, list[torch.Tensor]], st: SamplingSettings, bar) -> torch.Tensor:
        """Stage B sampling of one chunk: latents z (n,16,h,w) -> the last step's x0 (n,4,h',w') in float32."""
        sb = self.stage_b
        dt_b = _dtype_of(sb)
        x_init, step_noise = noise
        zb = z.to(self.device).float()
        inputs = {"effnet": zb, "clip": cond_clip}
        uncond = {"effnet": torch.zeros_like(zb), "clip": uncond_clip} if st.cfg is not None else None
        last = None
        steps = sample(lambda x, r, **kw: sb(x, r, **kw).float(), x_init.to(self.device), st,
                       model_inputs=inputs, unconditional_inputs=uncond,
                       noise=[t.to(self.device) for t in step_noise])
        for i, last in enumerate(steps):
            check_finite(last.x0, f"Stage B (sampling step {i + 1}/{st.steps})", dt_b)
            bar.update()
        return last.x0

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
                    files[name] = {"file": self.files[name].name, "sha256": file_sha256(self.files[name]),
                                   "sha256_of": "file"}
                else:
                    files[name] = {"file": None, "sha256": state_sha256(mod), "sha256_of": "state_dict"}
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
