"""What the network predicts (its training target) and how to get x0 / ε back from a prediction.

With ``x_t = a·x0 + b·ε`` (see :func:`~cascadekit.codec.diffusion.schedule.alpha_sigma`):

=========== ======================= ============================================ ==========================================
kind        target                  x0 from pred                                 ε from pred
=========== ======================= ============================================ ==========================================
``epsilon`` ε                       (x_t − b·pred) / a                           pred
``v``       a·ε − b·x0              a/(a²+b²)·x_t − b/(a²+b²)·pred               b/(a²+b²)·x_t + a/(a²+b²)·pred
``x0``      x0                      pred                                         (x_t − a·pred) / b
=========== ======================= ============================================ ==========================================

The released Stage B and Stage C predict ε. ``a`` and ``b`` are per-sample vectors (B,) or scalars;
(B,) vectors are broadcast over the remaining dims of x.
"""
from __future__ import annotations

import torch

from cascadekit.codec.diffusion.schedule import append_dims
from cascadekit.codec.errors import InputError

TARGETS = ("epsilon", "v", "x0")


def check_target(kind: str) -> str:
    """``kind`` unchanged if it is one of :data:`TARGETS` (``epsilon`` / ``v`` / ``x0``), else :class:`InputError`."""
    if kind not in TARGETS:
        raise InputError(f"unknown diffusion target {kind!r}; choose one of {', '.join(TARGETS)}")
    return kind


def _ab(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return append_dims(a, x.dim()), append_dims(b, x.dim())


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t − b·ε) / a. Note a ≈ 0.01 at t = 1, so ε errors are amplified ~100× there."""
    a, b = _ab(a, b, x_t)
    return (x_t - eps * b) / a


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ε = (x_t − a·x0) / b."""
    a, b = _ab(a, b, x_t)
    return (x_t - x0 * a) / b


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """v = a·ε − b·x0."""
    a, b = _ab(a, b, x0)
    return a * eps - b * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x0 = a/(a²+b²)·x_t − b/(a²+b²)·v."""
    a, b = _ab(a, b, x_t)
    sq = a**2 + b**2
    return a / sq * x_t - b / sq * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ε = b/(a²+b²)·x_t + a/(a²+b²)·v."""
    a, b = _ab(a, b, x_t)
    sq = a**2 + b**2
    return b / sq * x_t + a / sq * v


def make_target(kind: str, x0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The training target of ``kind`` ('epsilon' | 'v' | 'x0') for clean x0 and noise ε (same shape)."""
    check_target(kind)
    if kind == "epsilon":
        return eps
    if kind == "x0":
        return x0
    return v_from_x0_eps(x0, eps, a, b)


def pred_to_x0_eps(
    kind: str, x_t: torch.Tensor, pred: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network prediction of ``kind`` at x_t into (x0, ε) (official ``GDF.undiffuse``)."""
    check_target(kind)
    if kind == "epsilon":
        return x0_from_eps(x_t, pred, a, b), pred
    if kind == "x0":
        return pred, eps_from_x0(x_t, pred, a, b)
    return x0_from_v(x_t, pred, a, b), eps_from_v(x_t, pred, a, b)
