"""Cosine noise schedule (logSNR of t), its clamp limits, and the variance-preserving scalers.

Everything is evaluated in float32 with the same expressions as the official Stable Cascade ``gdf``
package (``CosineSchedule(clamp_range=[0.0001, 0.9999])`` + ``VPScaler``), because the networks are
very sensitive to the exact float32 value of the noise condition derived from logSNR:

* ``s = 0.008`` is a float32 tensor, ``var = cos((s + t) / (1 + s) · π/2)² / min_var`` is clamped to
  ``[float32(1e-4), float32(0.9999)]`` and ``logSNR = log(var / (1 - var))``;
* a shift is applied as ``logSNR + 2·log(1/shift)`` (shift 2 = noisier: lower logSNR at every t);
* the result is clamped to the limits of the **unshifted** schedule, computed once (about
  ``[-9.210240, +9.210074]``, not symmetric), so with shift 2 the value at t = 1 stays -9.210240.

t = 1 is pure noise (low logSNR), t = 0 is clean data (high logSNR).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from cascadekit.codec.errors import InputError

S = 0.008
"""Offset of the cosine schedule (Nichol & Dhariwal); the official value."""

CLAMP_RANGE = (0.0001, 0.9999)
"""Range the variance ``a²`` is clamped to before taking logSNR (official ``clamp_range``)."""


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """float64 stays float64 (the official code would too); everything else is evaluated in float32."""
    if not torch.is_tensor(t):
        t = torch.as_tensor(t, dtype=torch.float32)
    return t if t.dtype == torch.float64 else t.to(torch.float32)


def cosine_min_var(s: float = S, device: torch.device | str | None = None) -> torch.Tensor:
    """``cos(s / (1 + s) · π/2)²`` in float32 (a 0-dim tensor): the variance at t = 0 before normalising."""
    s_t = torch.tensor(s, dtype=torch.float32, device=device)
    return torch.cos(s_t / (1 + s_t) * torch.pi * 0.5) ** 2


def cosine_logsnr_raw(
    t: torch.Tensor, *, s: float = S, clamp_range: tuple[float, float] = CLAMP_RANGE
) -> torch.Tensor:
    """logSNR of the cosine schedule, without shift and without the logSNR clamp.

    t: any shape, values clamped to [0, 1] (1 = pure noise). Returns the same shape, float32
    (float64 if t is float64).
    """
    t = _as_float(t).clamp(0, 1)
    s_t = torch.tensor(s, dtype=torch.float32, device=t.device)
    min_var = cosine_min_var(s, t.device)
    var = torch.cos((s_t + t) / (1 + s_t) * torch.pi * 0.5).clamp(0, 1) ** 2 / min_var
    var = var.clamp(*clamp_range)
    return (var / (1 - var)).log()


@lru_cache(maxsize=None)
def logsnr_limits(s: float = S, clamp_range: tuple[float, float] = CLAMP_RANGE) -> tuple[float, float]:
    """(min, max) logSNR of the unshifted schedule = (logSNR(t=1), logSNR(t=0)) ≈ (-9.210240, 9.210074).

    Computed once per (s, clamp_range) exactly as the official ``reset_limits()`` does at construction;
    every :func:`cosine_logsnr` call clamps to these, whatever its shift.
    """
    lo, hi = cosine_logsnr_raw(torch.tensor([1.0, 0.0]), s=s, clamp_range=tuple(clamp_range)).tolist()
    return lo, hi


def cosine_logsnr(
    t: torch.Tensor,
    shift: float = 1.0,
    *,
    s: float = S,
    clamp_range: tuple[float, float] = CLAMP_RANGE,
) -> torch.Tensor:
    """Official cosine schedule: logSNR(t) with shift, clamped to the shift-1 :func:`logsnr_limits`.

    t: any shape in [0, 1] (1 = noise). shift > 0 (>1 = noisier). Returns float32 logSNR of t's
    shape, within about [-9.2102, 9.2101].
    """
    if not shift > 0:
        raise InputError(f"shift must be > 0, got {shift!r} (the official notebooks use 1 for Stage B, 2 for Stage C)")
    logsnr = cosine_logsnr_raw(t, s=s, clamp_range=clamp_range)
    if shift != 1:
        logsnr = logsnr + 2 * math.log(1 / shift)
    return logsnr.clamp(*logsnr_limits(s, tuple(clamp_range)))


def alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance-preserving scalers (official ``VPScaler``): ``x_t = a·x0 + b·ε``.

    ``a = sqrt(sigmoid(logSNR))`` and ``b = sqrt(1 - a²)`` (= sqrt(sigmoid(-logSNR)) mathematically; the
    official float32 expression ``1 - a²`` is kept). Same shape as logsnr; a, b in (0, 1).
    """
    a_sq = logsnr.sigmoid()
    return a_sq.sqrt(), (1 - a_sq).sqrt()


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a per-sample vector (B,) as (B, 1, ..., 1) with ``ndim`` dims; other shapes are returned as is."""
    if v.dim() == 1:
        return v.view(-1, *([1] * (ndim - 1)))
    return v


def timesteps(steps: int, t_start: float = 1.0, t_end: float = 0.0) -> torch.Tensor:
    """The t grid of a sampling run, as ``GDF.sample`` builds it: ``linspace(t_start, t_end, steps + 1)``.

    Returns (steps + 1,) float32 on CPU; step i goes from t[i] to t[i + 1].
    """
    if int(steps) != steps or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if not (0.0 <= t_end <= t_start <= 1.0):
        raise InputError(
            f"need 0 <= t_end <= t_start <= 1 (1 = pure noise), got t_start={t_start!r}, t_end={t_end!r}"
        )
    return torch.linspace(t_start, t_end, int(steps) + 1, dtype=torch.float32)
