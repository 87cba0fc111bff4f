"""Generated inpainting masks for ControlNet training (True = repaint), reproducible from a ``torch.Generator``.

The official trainer draws its masks from a small saliency network (``saliency_model.pt``, thresholds
U(0.04, 0.4), Gaussian blur 141, threshold 0.5) and inverts them with probability ``p_outpaint`` = 0.4. That
network's weights ship only with the official repository: with the user's copy of the file,
:mod:`cascadekit.generator.saliency` draws those masks; without it cascadekit draws **geometric** masks:
each sample gets, with equal probability, 1-3 random rectangles, 1-4 brush strokes (thick polylines) or a
border of random width per side, and the mask is inverted with probability ``p_outpaint`` (0.4, as
the official ``p_outpaint``): an inverted mask keeps a region and repaints everything around it (outpainting).
"""
from __future__ import annotations

import torch

from cascadekit.codec.errors import InputError

MASK_KINDS = ("rectangles", "strokes", "border")
P_OUTPAINT = 0.4


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _rectangles(h: int, w: int, g: torch.Generator) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    for _ in range(int(torch.randint(1, 4, (), generator=g))):
        rh, rw = max(1, round(h * _u(g, 0.1, 0.6))), max(1, round(w * _u(g, 0.1, 0.6)))
        y, x = int(torch.randint(0, h - rh + 1, (), generator=g)), int(torch.randint(0, w - rw + 1, (), generator=g))
        m[y:y + rh, x:x + rw] = True
    return m


def _segment_distance(yy, xx, p0, p1) -> torch.Tensor:
    d = p1 - p0
    t = (((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / d.pow(2).sum().clamp(min=1e-9)).clamp(0, 1)
    return ((yy - p0[0] - t * d[0]) ** 2 + (xx - p0[1] - t * d[1]) ** 2).sqrt()


def _strokes(h: int, w: int, g: torch.Generator) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    m = torch.zeros(h, w, dtype=torch.bool)
    for _ in range(int(torch.randint(1, 5, (), generator=g))):
        radius = max(1.0, min(h, w) * _u(g, 0.03, 0.1))
        pts = torch.rand(int(torch.randint(2, 7, (), generator=g)), 2, generator=g) * torch.tensor([h - 1, w - 1])
        for p0, p1 in zip(pts[:-1], pts[1:]):
            m |= _segment_distance(yy, xx, p0, p1) <= radius
    return m


def _border(h: int, w: int, g: torch.Generator) -> torch.Tensor:
    m = torch.ones(h, w, dtype=torch.bool)
    top, bottom = round(h * _u(g, 0.05, 0.3)), round(h * _u(g, 0.05, 0.3))
    left, right = round(w * _u(g, 0.05, 0.3)), round(w * _u(g, 0.05, 0.3))
    m[top:h - bottom, left:w - right] = False
    return m


_DRAW = {"rectangles": _rectangles, "strokes": _strokes, "border": _border}


def random_masks(n: int, height: int, width: int, generator: torch.Generator, p_outpaint: float = P_OUTPAINT,
                 kinds: tuple[str, ...] = MASK_KINDS) -> torch.Tensor:
    """(n, 1, height, width) bool training masks (module docstring); the same generator state gives the same masks."""
    unknown = [k for k in kinds if k not in _DRAW]
    if unknown or not kinds:
        raise InputError(f"unknown mask kind(s) {unknown or kinds}; choose from {', '.join(MASK_KINDS)}")
    if not 0 <= p_outpaint <= 1:
        raise InputError(f"p_outpaint must be in [0, 1], got {p_outpaint}")
    masks = []
    for _ in range(n):
        kind = kinds[int(torch.randint(0, len(kinds), (), generator=generator))]
        m = _DRAW[kind](height, width, generator)
        if float(torch.rand((), generator=generator)) < p_outpaint:
            m = ~m
        masks.append(m)
    return torch.stack(masks)[:, None]
