"""Pyramid noise (official train_b.py rule): levels used, unit variance, the correlation structure."""
from __future__ import annotations

import torch

from cascadekit.generator.pyramid_noise import LEVEL_DECAY, pyramid_levels, pyramid_noise


def test_levels_follow_the_official_rule():
    # 256x256 (1024^2 images): sides 128, 64, 32 are out of [1, 16]; 16, 8, 4, 2, 1 are used; stop at 1
    assert [(i, h, w) for i, h, w, _ in pyramid_levels(256, 256)] == [(4, 16, 16), (5, 8, 8), (6, 4, 4), (7, 2, 2),
                                                                        (8, 1, 1)]
    assert [m for *_, m in pyramid_levels(256, 256)] == [LEVEL_DECAY ** i for i in range(4, 9)]
    assert [i for i, *_ in pyramid_levels(8, 8)] == [1, 2, 3]
    # non-square: sides from H and W separately, stop once either reaches 1 (never a 0-size level)
    assert [(h, w) for _, h, w, _ in pyramid_levels(64, 16)] == [(32, 8), (16, 4), (8, 2), (4, 1)]
    assert pyramid_levels(8, 8, size_range=None) == pyramid_levels(8, 8, size_range=(1, 10**6))


def test_unit_variance_and_zero_mean():
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(256, 4, 32, 32, generator=g)
    out = pyramid_noise(eps, g)
    assert out.shape == eps.shape
    assert abs(float(out.mean())) < 0.02
    assert abs(float(out.var()) - 1.0) < 0.02
    rect = pyramid_noise(torch.randn(256, 4, 32, 16, generator=g), g)
    assert abs(float(rect.var()) - 1.0) < 0.03


def test_correlation_structure():
    """Two elements share exactly the offsets of the levels whose blocks contain both:
    corr = sum(m_i^2 over those levels) / (1 + sum(m_i^2 over all levels))."""
    g = torch.Generator().manual_seed(1)
    out = pyramid_noise(torch.randn(4096, 1, 64, 64, generator=g), g)
    levels = pyramid_levels(64, 64)  # i = 2..6: blocks of 4, 8, 16, 32, 64 pixels
    total = 1 + sum(m * m for *_, m in levels)

    def corr(a, b):
        x, y = out[:, 0, a[0], a[1]], out[:, 0, b[0], b[1]]
        return float(((x - x.mean()) * (y - y.mean())).mean() / (x.std() * y.std()))

    def expected(block_min):  # levels whose block side is >= block_min
        return sum(m * m for i, *_, m in levels if 2 ** i >= block_min) / total

    assert abs(corr((0, 0), (0, 1)) - expected(4)) < 0.04  # same 4x4 block: every level
    assert abs(corr((0, 0), (0, 5)) - expected(8)) < 0.04  # different 4-blocks, same 8-block
    assert abs(corr((0, 0), (0, 40)) - expected(64)) < 0.04  # only the whole-image level
    assert corr((0, 0), (0, 1)) > corr((0, 0), (0, 5)) > corr((0, 0), (0, 40)) > 0


def test_drawn_from_the_generator():
    e = torch.zeros(2, 4, 16, 16)
    a = pyramid_noise(e, torch.Generator().manual_seed(3))
    b = pyramid_noise(e, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and float(a.abs().sum()) > 0
