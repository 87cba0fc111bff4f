"""The ``effnet_scales`` field: EfficientNet latents of the crop at several nearest-neighbour downscales.

The official Stage B trainer (``train/train_b.py``) conditions on the EfficientNet latents of the training
image after a nearest downscale by f ~ U(0.5, 1), each side snapped down to a multiple of 32
(``int(side * f // 32 * 32)``). One stored latent cannot be re-drawn at another f, so ``encode --effnet-scales
0.5,0.75,1.0`` (or ``add-controls --effnet-scales``) stores the latents of a few fixed factors and the trainer
draws one per sample: the store's approximation of U(0.5, 1) (``--on-the-fly-effnet`` recomputes the exact rule).

Per row ``effnet_scales`` (S, 16, h_max, w_max): slot ``s`` holds the latents of the crop downscaled by
factor ``s`` (ascending), zero-padded to the largest slot; the group attributes ``effnet_scales`` (the factors)
and ``effnet_scale_sizes`` ([h, w] latent size per slot) say what each slot is. The downscale is of the crop
itself (``--resolution``), not of the ``--encoder-resolution`` image, as the official trainer downscales the
training image.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cascadekit.codec.errors import InputError
from cascadekit.codec.models.effnet import encode_pixels

FIELD = "effnet_scales"
SNAP = 32  # the EfficientNet's stride: sides are snapped down to multiples of it (official)


def parse_effnet_scales(value: str | Iterable[Any] | None) -> tuple[float, ...]:
    """``"0.5,0.75,1.0"`` / ``[0.5, 1]`` -> ``(0.5, 0.75, 1.0)`` (ascending). InputError for anything that is
    not a number in (0, 1], a repeat, or an empty list (given at all)."""
    if value is None:
        return ()
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    factors = []
    for v in items:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not (math.isfinite(f) and 0 < f <= 1) or isinstance(v, bool):
            raise InputError(f"effnet scale {v!r} is not a downscale factor in (0, 1] (comma-separated "
                             "numbers, e.g. --effnet-scales 0.5,0.75,1.0)")
        factors.append(f)
    if not factors:
        raise InputError("effnet scales: give at least one factor in (0, 1], e.g. --effnet-scales 0.5,0.75,1.0")
    dups = sorted({f for f in factors if factors.count(f) > 1})
    if dups:
        raise InputError(f"effnet scale(s) {', '.join(map(str, dups))} given more than once")
    return tuple(sorted(factors))


def scaled_size(hw: Sequence[int], factor: float) -> tuple[int, int]:
    """(H, W) of an image nearest-downscaled by ``factor`` as the official trainer does: each side
    ``int(side * factor // 32 * 32)`` (may be 0 for small images; see :func:`check_fits`)."""
    return tuple(int(float(s) * float(factor) // SNAP * SNAP) for s in hw)


def check_fits(factors: Iterable[float], hw: Sequence[int], where: str = "") -> None:
    """InputError when a factor leaves a side of a ``hw`` crop below 32 px (no EfficientNet latent)."""
    for f in factors:
        size = scaled_size(hw, f)
        if min(size) < SNAP:
            raise InputError(f"{where}effnet scale {f} of a {hw[0]}x{hw[1]} crop is {size[0]}x{size[1]} px: a side "
                             f"below {SNAP} px has no EfficientNet latent; use larger factors or a larger --resolution")


def effnet_module(encoder: Any) -> torch.nn.Module | None:
    """The EfficientNet module of ``encoder`` (a ``Codec``'s ``effnet``, or the module itself), else None."""
    if isinstance(encoder, torch.nn.Module):
        return encoder
    net = getattr(encoder, "effnet", None)
    return net if isinstance(net, torch.nn.Module) else None


def latents_at(images: torch.Tensor, encoder: Any, size: Sequence[int]) -> torch.Tensor:
    """EfficientNet latents (B, 16, H'/32, W'/32) float32 (on the encoder's device) of ``images`` (B, 3, H, W)
    in [0, 1] nearest-resized to ``size`` (H', W'). ``encoder``: a ``Codec`` / the EfficientNet module (fed
    ImageNet-normalised images in its own dtype), or any object whose ``encode`` maps images to latents."""
    x = F.interpolate(images.float(), size=tuple(int(s) for s in size), mode="nearest")
    net = effnet_module(encoder)
    if net is None:
        with torch.no_grad():  # not inference_mode: training feeds the result to autograd-recorded ops
            return encoder.encode(x).float()
    return encode_pixels(net, x)


def scale_slots(images: torch.Tensor, encoder: Any, factors: Sequence[float]) -> list[torch.Tensor]:
    """Per factor the latents (B, 16, h_s, w_s) of ``images`` (B, 3, H, W in [0, 1]) downscaled by it (CPU)."""
    hw = images.shape[-2:]
    return [latents_at(images, encoder, scaled_size(hw, f)).cpu() for f in factors]


def pad_slots(slots: Sequence[torch.Tensor]) -> np.ndarray:
    """[(B, C, h_s, w_s)] -> (B, S, C, h_max, w_max) float32, each slot zero-padded at the bottom / right."""
    hm, wm = max(int(s.shape[-2]) for s in slots), max(int(s.shape[-1]) for s in slots)
    b, c = int(slots[0].shape[0]), int(slots[0].shape[1])
    out = np.zeros((b, len(slots), c, hm, wm), np.float32)
    for i, s in enumerate(slots):
        out[:, i, :, :s.shape[-2], :s.shape[-1]] = s.numpy()
    return out


def group_attrs(factors: Sequence[float], slots: Sequence[torch.Tensor]) -> dict[str, list]:
    """The group attributes describing the slots (what :mod:`cascadekit.generator.stage_b_data` reads)."""
    return {"effnet_scales": [float(f) for f in factors],
            "effnet_scale_sizes": [[int(s.shape[-2]), int(s.shape[-1])] for s in slots]}


__all__ = ["FIELD", "SNAP", "check_fits", "effnet_module", "group_attrs", "latents_at", "pad_slots",
           "parse_effnet_scales", "scale_slots", "scaled_size"]
