"""Pyramid ("multi-resolution offset") noise for Stage B training, as in the official ``train/train_b.py``.

For levels ``i = 1 .. levels-1``: a side ``h_i = H // 2**i`` (and ``w_i = W // 2**i``); when a side lies in
``size_range`` (official ``[1, 16]``) N(0, 1) noise drawn at ``(h_i, w_i)`` is nearest-upsampled to ``(H, W)``,
multiplied by ``0.75**i`` and added to ε; the loop stops once a side reaches 1. The sum is divided by
``sqrt(1 + Σ m_i²)`` over the levels used, so every element keeps unit variance.

Non-square latents: the official code reads the height twice (``h = w = H // 2**i``), which draws square
offsets and stretches them to ``H x W``. Here ``h_i`` and ``w_i`` come from H and W separately (the same
as the official for square latents): a level is used when either side lies in the range, and the loop
stops once either side reaches 1, so no side is ever 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

OFFICIAL_RANGE = (1, 16)
OFFICIAL_LEVELS = 10
LEVEL_DECAY = 0.75


def pyramid_levels(h: int, w: int, size_range: tuple[int, int] | None = OFFICIAL_RANGE,
                   levels: int = OFFICIAL_LEVELS) -> list[tuple[int, int, int, float]]:
    """The levels used for an ``h x w`` latent: ``(i, h_i, w_i, multiplier)`` in order."""
    out = []
    for i in range(1, levels):
        hi, wi = h // 2 ** i, w // 2 ** i
        if hi < 1 or wi < 1:
            break
        if size_range is None or any(size_range[0] <= s <= size_range[1] for s in (hi, wi)):
            out.append((i, hi, wi, LEVEL_DECAY ** i))
        if hi <= 1 or wi <= 1:
            break
    return out


def pyramid_noise(eps: torch.Tensor, generator: torch.Generator | None = None,
                  size_range: tuple[int, int] | None = OFFICIAL_RANGE, levels: int = OFFICIAL_LEVELS) -> torch.Tensor:
    """ε (B, C, H, W) -> pyramid noise of the same shape and unit variance per element (module docstring).

    The offsets are drawn from ``generator`` (on ε's device) level by level, after whatever drew ε.
    """
    b, c, h, w = eps.shape
    out = eps.clone()
    total = 1.0
    for _, hi, wi, m in pyramid_levels(h, w, size_range, levels):
        offset = torch.randn((b, c, hi, wi), generator=generator, device=eps.device, dtype=eps.dtype)
        out = out + F.interpolate(offset, size=(h, w), mode="nearest") * m
        total += m * m
    return out / total ** 0.5
