"""Per-sample loss weights of the diffusion training loss: P2 (official default) and adaptive.

Both take the logSNR of each sample (B,) and return a weight (B,) that multiplies the per-sample
MSE (``loss = mse(pred, target).mean(dims) ; (loss * weight).mean()``). A loss ``shift`` is applied
as ``logSNR + 2·log(shift)`` before weighting (the opposite sign of the schedule shift, so that
``loss_shift == shift`` weights a shifted schedule like the unshifted one).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cascadekit.codec.errors import InputError


def _shifted(logsnr: torch.Tensor, shift: float) -> torch.Tensor:
    if not shift > 0:
        raise InputError(f"loss shift must be > 0, got {shift!r}")
    return logsnr + 2 * math.log(shift) if shift != 1 else logsnr


def p2_loss_weight(
    logsnr: torch.Tensor, *, k: float = 1.0, gamma: float = 1.0, s: float = 1.0, shift: float = 1.0
) -> torch.Tensor:
    """P2 weight ``(k + exp(s·logSNR))^(−gamma)`` (official ``P2LossWeight``, defaults k = gamma = s = 1).

    With the defaults this is ``sigmoid(−logSNR)`` = b², i.e. ~1 at high noise and ~1e-4 at t = 0.
    logsnr: any shape; returns the same shape.
    """
    logsnr = _shifted(logsnr, shift)
    return (k + (logsnr * s).exp()) ** -gamma


class AdaptiveLossWeight(nn.Module):
    """Official ``AdaptiveLossWeight``: weight = 1 / (EMA of the loss in the sample's logSNR bucket).

    ``buckets`` loss slots are addressed by ``searchsorted`` over ``buckets − 1`` edges spread evenly on
    ``logsnr_range`` (values outside land in the first / last slot). The state is two buffers,
    ``bucket_ranges`` (buckets−1,) and ``bucket_losses`` (buckets,), so ``state_dict()`` checkpoints it.
    """

    def __init__(
        self,
        logsnr_range: tuple[float, float] = (-10.0, 10.0),
        buckets: int = 300,
        weight_range: tuple[float, float] = (1e-7, 1e7),
    ):
        super().__init__()
        if buckets < 2:
            raise InputError(f"AdaptiveLossWeight needs at least 2 buckets, got {buckets}")
        self.weight_range = tuple(weight_range)
        self.register_buffer("bucket_ranges", torch.linspace(logsnr_range[0], logsnr_range[1], buckets - 1))
        self.register_buffer("bucket_losses", torch.ones(buckets))

    def bucket_index(self, logsnr: torch.Tensor) -> torch.Tensor:
        """Bucket of each logSNR value (int64, same shape, on the buffers' device)."""
        logsnr = logsnr.detach().to(self.bucket_ranges.device, self.bucket_ranges.dtype)
        return torch.searchsorted(self.bucket_ranges, logsnr.contiguous())

    def forward(self, logsnr: torch.Tensor, shift: float = 1.0) -> torch.Tensor:
        """Weights (same shape as logsnr, on its device), clamped to ``weight_range``."""
        idx = self.bucket_index(_shifted(logsnr, shift))
        return (1 / self.bucket_losses[idx]).clamp(*self.weight_range).to(logsnr.device)

    @torch.no_grad()
    def update(self, logsnr: torch.Tensor, loss: torch.Tensor, beta: float = 0.99) -> None:
        """EMA-update the buckets hit by this batch: ``L[i] ← beta·L[i] + (1 − beta)·loss``.

        logsnr, loss: (B,). When several samples share a bucket, the last one in the batch wins
        (what the official in-place indexed assignment does on CPU), deterministically on any device.
        """
        if logsnr.shape != loss.shape:
            raise InputError(f"logsnr {tuple(logsnr.shape)} and per-sample loss {tuple(loss.shape)} must have the same shape")
        idx = self.bucket_index(logsnr).flatten()
        loss = loss.detach().flatten().to(self.bucket_losses.device, self.bucket_losses.dtype)
        last = {int(i): j for j, i in enumerate(idx.tolist())}  # bucket -> position of its last sample
        pos = torch.tensor(list(last.values()), dtype=torch.long, device=idx.device)
        sel = idx[pos]
        self.bucket_losses[sel] = self.bucket_losses[sel] * beta + loss[pos] * (1 - beta)

    # the official class name of the update
    update_buckets = update
