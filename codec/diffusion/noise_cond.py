"""Cosine-t noise conditioning: the ``r`` in [0, 1] that Stage B / Stage C receive (official ``CosineTNoiseCond``).

It inverts the cosine schedule: ``r = acos(sqrt(sigmoid(logSNR) · min_var)) / (π/2) · (1 + s) - s``,
clamped to [0, 1]. r ≈ t except at the clamped ends (t = 1 → r = 0.993583; t = 0 → r = 0.002257 at
shift 1). Evaluated in float32 with the official expression: near t = 0 the acos is ill-conditioned
and a float64 evaluation differs by up to ~3e-4 relative, which the networks' sinusoidal
r-embedding (arguments up to 1e4 rad) would amplify.
"""
from __future__ import annotations

import torch

from cascadekit.codec.diffusion.schedule import S, cosine_min_var


def cosine_t_noise_cond(logsnr: torch.Tensor, *, s: float = S) -> torch.Tensor:
    """r = CosineTNoiseCond(logSNR). logsnr: any shape; returns float32 (float64 kept) of that shape in [0, 1]."""
    if logsnr.dtype != torch.float64:
        logsnr = logsnr.to(torch.float32)
    var = logsnr.sigmoid().clamp(0, 1)
    s_t = torch.tensor(s, dtype=torch.float32, device=logsnr.device)
    min_var = cosine_min_var(s, logsnr.device)
    r = (((var * min_var) ** 0.5).acos() / (torch.pi * 0.5)) * (1 + s_t) - s_t
    return r.clamp(0, 1)
