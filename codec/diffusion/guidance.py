"""Classifier-free guidance with the official ``cfg_rho`` std-rescale."""
from __future__ import annotations

import torch

from cascadekit.codec.errors import InputError


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float, rho: float = 0.7) -> torch.Tensor:
    """Guided prediction from the conditional and unconditional predictions (same shape, e.g. (B,C,H,W)).

    ``pred_cfg = lerp(uncond, cond, scale)`` (scale 1 = cond, 0 = uncond). With ``rho > 0`` the result
    is pulled back towards the conditional prediction's spread:
    ``rho · pred_cfg · std(cond) / (std(pred_cfg) + 1e-9) + (1 − rho) · pred_cfg``, where ``std`` is
    ``torch.std`` (unbiased) over the **whole batch tensor**, not per sample — exactly as the official
    ``GDF.sample``; a per-sample std gives different samples. Official default rho: 0.7.
    """
    pred_cfg = torch.lerp(uncond, cond, scale)
    if rho > 0:
        std_pos, std_cfg = cond.std(), pred_cfg.std()
        return rho * (pred_cfg * std_pos / (std_cfg + 1e-9)) + pred_cfg * (1 - rho)
    return pred_cfg


def cfg_scale_at(cfg_value: float | tuple[float, float] | list[float], t: float) -> float:
    """The guidance scale at time t: a number, or a pair ``(at_t1, at_t0)`` interpolated linearly in t."""
    if isinstance(cfg_value, (list, tuple)):
        if len(cfg_value) != 2:
            raise InputError(f"cfg must be a number or a pair (scale at t=1, scale at t=0), got {cfg_value!r}")
        return cfg_value[0] * t + cfg_value[1] * (1 - t)
    return cfg_value
