"""CLIP embeddings as Stable Cascade consumes them, and the cached empty-caption embedding.

Text (CLIP ViT-bigG/14, ``CLIPTextModelWithProjection``), as in the official ``get_conditions``:
tokens padded to ``max_length`` (77) with truncation, the attention mask passed to the model, and

* ``clip_text``        (B, 77, C): ``hidden_states[-1]``, the output of the LAST transformer layer
  BEFORE the final layer norm (not ``last_hidden_state``, which is after it); C = 1280 for bigG.
* ``clip_text_pooled`` (B, 1, P):  ``text_embeds.unsqueeze(1)``, the projected pooled (EOS) token; P = 1280.

Image (CLIP ViT-L/14, ``CLIPVisionModelWithProjection``): images in [0, 1] are resized (shortest
side, bicubic, antialiased), centre-cropped and normalised with the CLIP mean/std exactly like the
official ``clip_preprocess``; ``clip_img`` = ``image_embeds.unsqueeze(1)`` (B, 1, 768).

:func:`empty_caption_embeddings` computes the embedding of the empty caption once and caches it as
``empty_caption.safetensors`` beside the weights (or under ``~/.cache/cascadekit/<sha>/`` when that
folder is read-only), so that plain decoding needs no text encoder afterwards.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from cascadekit.codec.errors import DependencyError, InputError, OutputError, WeightsError
from cascadekit.codec.fsio import atomic_write_bytes

EMPTY_CAPTION_FILE = "empty_caption.safetensors"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``dtype=`` for transformers >= 4.56 (where ``torch_dtype`` is deprecated), else ``torch_dtype=``."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def clip_classes(*names: str) -> tuple:
    """``transformers`` classes by name, or one :class:`DependencyError` saying how to fix the install.

    Newer transformers releases need a newer torch than cascadekit's minimum (2.4): 5.20+ switch
    their PyTorch models off below torch 2.6, and some 5.x releases import torch APIs that torch 2.4
    lacks. Either way ``from transformers import CLIP...`` fails with an ImportError that does not
    say why; this turns it into an actionable message.
    """
    why = None
    try:
        mod = importlib.import_module("transformers")
        if not importlib.import_module("transformers.utils").is_torch_available():  # transformers switched its PyTorch models off
            why = "it does not support this torch and disabled its PyTorch models"
        else:
            return tuple(getattr(mod, n) for n in names)
    except (ImportError, AttributeError) as e:
        why = f"{type(e).__name__}: {e}"
    tv = getattr(sys.modules.get("transformers"), "__version__", "?")
    raise DependencyError(
        f"transformers {tv} cannot provide {', '.join(names)} with torch {torch.__version__} ({why}). "
        "Install a transformers release that supports this torch (with torch 2.4: "
        "pip install 'transformers>=4.44,<5', tested with 4.57.6), or upgrade torch to >= 2.6."
    )


def _component_dirs(source, component: str) -> list[Path]:
    """Folders to try for a transformers component: ``source/component``, ``source`` itself, siblings."""
    from cascadekit.codec.weights.sources import WeightSet, resolve_source

    if isinstance(source, WeightSet):
        p = getattr(source, component)
        return [p] if p is not None else []
    s = str(source)
    if not os.path.exists(os.path.expanduser(s)):
        ws = resolve_source(s, need=(component,))  # hub id, or one clear WeightsError
        return [getattr(ws, component)]
    root = Path(os.path.expanduser(s))
    return [root / component, root, root.parent / component]


def _pick(dirs: list[Path], test, what: str, source) -> Path:
    for d in dirs:
        if d.is_dir() and test(d):
            return d
    raise WeightsError(f"no {what} found for {source}; looked in: {', '.join(str(d) for d in dirs) or '(nothing)'}")


class TextEncoder:
    """CLIP text tower + tokenizer producing ``(clip_text (B,77,C), clip_text_pooled (B,1,P))``."""

    def __init__(self, tokenizer, model, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.tokenizer = tokenizer
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_length = min(int(tokenizer.model_max_length), int(model.config.max_position_embeddings))
        self.source: str | None = None

    @classmethod
    def from_pretrained(cls, source, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "TextEncoder":
        """``source``: a weights folder / diffusers snapshot with ``text_encoder/`` and ``tokenizer/``,
        the ``text_encoder`` folder itself (tokenizer beside it), a :class:`WeightSet`, or a hub id."""
        CLIPTextModelWithProjection, CLIPTokenizer = clip_classes("CLIPTextModelWithProjection", "CLIPTokenizer")

        from cascadekit.codec.weights.sources import WeightSet, resolve_source

        where = source
        if not isinstance(source, WeightSet) and not os.path.exists(os.path.expanduser(str(source))):
            where = resolve_source(str(source), need=("text_encoder", "tokenizer"))  # a hub id: resolved once
        model_dir = _pick(_component_dirs(where, "text_encoder"),
                          lambda d: (d / "config.json").is_file(), "CLIP text encoder (config.json)", source)
        tok_dirs = _component_dirs(where, "tokenizer") + [model_dir, model_dir.parent / "tokenizer"]
        tok_dir = _pick(tok_dirs, lambda d: (d / "vocab.json").is_file() or (d / "tokenizer.json").is_file(),
                        "CLIP tokenizer (vocab.json/tokenizer.json)", source)
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
            model = CLIPTextModelWithProjection.from_pretrained(str(model_dir), **_dtype_kwarg(dtype))
        except (OSError, ValueError) as e:
            raise WeightsError(f"cannot load the CLIP text encoder from {model_dir} / {tok_dir}: {e}") from None
        enc = cls(tokenizer, model, device, dtype)
        enc.source = str(model_dir)
        return enc

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def projection_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """input_ids / attention_mask (B, max_length), padded to max_length and truncated."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise InputError("prompts must be a list of strings")
        tok = self.tokenizer(list(prompts), truncation=True, padding="max_length", max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": tok["input_ids"].to(self.device), "attention_mask": tok["attention_mask"].to(self.device)}

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts (B strings) -> clip_text (B, 77, C) pre-final-layer-norm hidden states, clip_text_pooled (B, 1, P)."""
        out = self.model(**self.tokenize(prompts), output_hidden_states=True)
        return out.hidden_states[-1], out.text_embeds.unsqueeze(1)


class ImageEncoder:
    """CLIP vision tower with projection: images (B,3,H,W) in [0,1] -> clip_img (B, 1, P) (P = 768 for ViT-L/14)."""

    def __init__(self, model, size: int, crop: int, mean=CLIP_MEAN, std=CLIP_STD,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.size, self.crop = int(size), int(crop)
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = torch.device(device)
        self.dtype = dtype

    @classmethod
    def from_pretrained(cls, source, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "ImageEncoder":
        """``source``: a folder / snapshot with ``image_encoder/`` (+ ``feature_extractor/`` or a
        ``preprocessor_config.json`` inside), the ``image_encoder`` folder itself, a WeightSet, or a hub id."""
        (CLIPVisionModelWithProjection,) = clip_classes("CLIPVisionModelWithProjection")

        model_dir = _pick(_component_dirs(source, "image_encoder"), lambda d: (d / "config.json").is_file(),
                          "CLIP image encoder (config.json)", source)
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(str(model_dir), **_dtype_kwarg(dtype))
        except (OSError, ValueError) as e:
            raise WeightsError(f"cannot load the CLIP image encoder from {model_dir}: {e}") from None
        image_size = int(model.config.image_size)
        size, crop, mean, std = image_size, image_size, CLIP_MEAN, CLIP_STD
        for cand in (model_dir / "preprocessor_config.json", model_dir.parent / "feature_extractor" / "preprocessor_config.json"):
            if cand.is_file():
                cfg = json.loads(cand.read_text())
                s = cfg.get("size", image_size)
                size = s.get("shortest_edge", s.get("height", image_size)) if isinstance(s, dict) else int(s)
                c = cfg.get("crop_size", size)
                crop = c.get("height", size) if isinstance(c, dict) else int(c)
                mean, std = cfg.get("image_mean", CLIP_MEAN), cfg.get("image_std", CLIP_STD)
                break
        return cls(model, size, crop, mean, std, device, dtype)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B,3,crop,crop) normalised: bicubic antialiased resize of the shortest side, centre crop."""
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = images.to(device=self.device, dtype=torch.float32)
        x = TF.resize(x, self.size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        x = TF.center_crop(x, [self.crop, self.crop])
        return TF.normalize(x, self.mean, self.std)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B,3,H,W) in [0,1] -> image_embeds (B, 1, P)."""
        return self.model(pixel_values=self.preprocess(images).to(self.dtype)).image_embeds.unsqueeze(1)


def _default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cascadekit"


def empty_caption_cache_paths(weights_dir, cache_root: str | os.PathLike | None = None) -> list[Path]:
    """Where the empty-caption cache is looked for / written: beside the weights, then the user cache
    (``<cache_root or $XDG_CACHE_HOME/cascadekit or ~/.cache/cascadekit>/<sha256(weights_dir)[:16]>/``)."""
    weights_dir = Path(weights_dir).expanduser().resolve()
    key = hashlib.sha256(str(weights_dir).encode()).hexdigest()[:16]
    root = Path(cache_root) if cache_root is not None else _default_cache_root()
    user = root / key / EMPTY_CAPTION_FILE
    if weights_dir.parent.name == "snapshots" and weights_dir.parent.parent.name.startswith("models--"):
        return [user]  # never add files to a Hugging Face hub cache snapshot
    return [weights_dir / EMPTY_CAPTION_FILE, user]


def _write_cache(path: Path, tensors: dict, metadata: dict) -> bool:
    """Write a safetensors cache file atomically (:func:`~cascadekit.codec.fsio.atomic_write_bytes`);
    False when its folder cannot be written (the caller tries the next cache location)."""
    from safetensors.torch import save  # lazy, as the module's other safetensors uses

    data = save({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        return True
    except (OSError, OutputError):
        return False


def empty_caption_embeddings(
    weights_dir,
    text_encoder: TextEncoder | None = None,
    *,
    allow_zeros: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_root: str | os.PathLike | None = None,
    dims: tuple[int, int] = (1280, 1280),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of the empty caption ``""``: (clip_text (1,77,C), clip_text_pooled (1,1,P)).

    Order: a cache file (``weights_dir/empty_caption.safetensors``, then
    ``<cache_root or ~/.cache/cascadekit>/<sha of weights_dir>/empty_caption.safetensors``); else the
    given ``text_encoder`` or the one in ``weights_dir/text_encoder`` computes it and the result is
    cached (beside the weights if writable, else in the user cache). A cache whose widths differ from
    the given encoder's is recomputed. With nothing available: :class:`WeightsError`, unless
    ``allow_zeros=True`` (zeros of widths ``dims`` = (C, P)).
    """
    from cascadekit.codec.weights.io import read_state_dict
    from cascadekit.codec.weights.sources import WeightSet

    te_source = None  # where to load a text encoder from if no cache exists (lazily)
    if isinstance(weights_dir, WeightSet):
        if weights_dir.text_encoder is not None and weights_dir.tokenizer is not None:
            te_source = weights_dir
        weights_dir = weights_dir.weights_dir
    weights_dir = Path(weights_dir).expanduser()
    paths = empty_caption_cache_paths(weights_dir, cache_root)
    for p in paths:
        if p.is_file():
            try:
                sd = read_state_dict(p)
                text, pooled = sd["clip_text"], sd["clip_text_pooled"]
            except (WeightsError, KeyError):
                continue  # a damaged cache is recomputed
            if text_encoder is None or (text.shape[-1] == text_encoder.hidden_size and pooled.shape[-1] == text_encoder.projection_dim):
                return text.to(device=device, dtype=dtype), pooled.to(device=device, dtype=dtype)
    if text_encoder is None and te_source is None and (weights_dir / "text_encoder" / "config.json").is_file():
        te_source = weights_dir
    if text_encoder is None and te_source is not None:
        text_encoder = TextEncoder.from_pretrained(te_source, device=device)
    if text_encoder is None:
        if allow_zeros:
            return (torch.zeros(1, 77, dims[0], device=device, dtype=dtype),
                    torch.zeros(1, 1, dims[1], device=device, dtype=dtype))
        raise WeightsError(
            f"the empty-caption CLIP embedding is needed but there is no cache ({' or '.join(str(p) for p in paths)}) "
            f"and no text encoder ({weights_dir / 'text_encoder'} does not exist). Provide one of: a CLIP ViT-bigG "
            "text encoder + tokenizer as text_encoder/ and tokenizer/ in the weights folder (e.g. from "
            "stabilityai/stable-cascade), a TextEncoder via text_encoder=..., or pass allow_zeros=True to use "
            "zero embeddings (lower quality)."
        )
    text, pooled = text_encoder.encode([""])
    meta = {"caption": "", "text_encoder": str(text_encoder.source), "hidden_size": str(text.shape[-1]),
            "projection_dim": str(pooled.shape[-1]), "what": "clip_text = hidden_states[-1]; clip_text_pooled = text_embeds"}
    for p in paths:
        if _write_cache(p, {"clip_text": text, "clip_text_pooled": pooled}, meta):
            break
    return text.to(device=device, dtype=dtype), pooled.to(device=device, dtype=dtype)
