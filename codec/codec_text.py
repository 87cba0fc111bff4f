"""The codec's text glue: Stage B's pooled-CLIP inputs (empty caption, captions) and their checks.

Stage B's conditional and unconditional inputs both take a pooled CLIP ViT-bigG embedding (B,1,C): of the
caption, or of the empty caption (official reconstruction notebook). This module reads the empty-caption
embedding for a weight set, asks a text encoder for captions, and checks shapes.
"""
from __future__ import annotations

from typing import Any

import torch

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.text import empty_caption_embeddings


def check_pooled(clip: torch.Tensor, what: str, c_clip: int | None) -> torch.Tensor:
    """A pooled embedding (B,1,C), (B,C) or (C,) as float32 (B,1,C); ``c_clip`` (when known) must equal C."""
    clip = clip.detach().float()
    if clip.dim() == 1:
        clip = clip.view(1, 1, -1)
    elif clip.dim() == 2:
        clip = clip.unsqueeze(1)
    if clip.dim() != 3 or clip.shape[1] != 1:
        raise InputError(f"{what} must be a pooled CLIP embedding (B,1,C), (B,C) or (C,), got {tuple(clip.shape)}")
    if c_clip is not None and clip.shape[-1] != c_clip:
        raise InputError(f"{what} has {clip.shape[-1]} channels but Stage B expects {c_clip}")
    return clip


def pooled_from_text_encoder(text_encoder: Any, captions: list[str]) -> torch.Tensor:
    """Pooled CLIP embeddings (B,1,C) of ``captions`` from a :class:`cascadekit.codec.text.TextEncoder`
    (``encode(captions) -> (clip_text, clip_text_pooled)``)."""
    encode = getattr(text_encoder, "encode", None)
    if not callable(encode):
        raise InputError(f"text_encoder must be a cascadekit.codec.text.TextEncoder, got {type(text_encoder).__name__}")
    out = encode(captions)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise InputError("text_encoder.encode(captions) must return (clip_text, clip_text_pooled)")
    return out[1]


def caption_list(captions: str | list[str], batch: int) -> list[str]:
    """One caption per latent (a single string is repeated); a wrong count is an :class:`InputError`."""
    if isinstance(captions, str):
        captions = [captions] * batch
    captions = list(captions)
    if len(captions) != batch:
        raise InputError(f"got {len(captions)} captions for {batch} latents; give one per latent (or one string)")
    return captions


def load_empty_clip(ws, c_clip: int, text_encoder: Any) -> tuple[torch.Tensor | None, str | None]:
    """``(pooled (1,1,c_clip), None)`` from the empty-caption cache beside the weights (computed once with
    ``text_encoder`` or the weights' own ``text_encoder/`` when not cached), or ``(None, why)``."""
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


def no_empty_clip_error(why: str | None) -> WeightsError:
    """The error of a decode without an empty-caption embedding (``why``: what loading it said)."""
    detail = f" ({why})" if why else ""
    return WeightsError(
        "cannot decode: the pooled CLIP embedding of the empty caption is not available, and Stage B's "
        "conditional and unconditional inputs need it. Put a CLIP ViT-bigG text_encoder/ + tokenizer/ "
        "beside the weights (it is computed and cached once as empty_caption.safetensors), pass "
        "text_encoder= to Codec.from_pretrained, or pass allow_zero_text=True to use zeros "
        f"(lower quality).{detail}"
    )


__all__ = ["caption_list", "check_pooled", "load_empty_clip", "no_empty_clip_error", "pooled_from_text_encoder"]
