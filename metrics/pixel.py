"""PSNR and SSIM per image, with an explicit data range.

Traps handled:
- torchmetrics' PSNR/SSIM classes pool over the whole batch by default (PSNR of the pooled MSE, not the mean of
  per-image PSNRs), so the aggregate would depend on how images are batched. Here every function returns one value
  per image; aggregate with `mean_of` (mean of per-image values), which is batch-size independent.
- `data_range` is always passed explicitly (torchmetrics infers it from the data when it is None).
- Computation is in float64 so results do not depend on batch composition beyond rounding.
- SSIM averages the valid window positions only (as the reference implementation and scikit-image do).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from .errors import MetricInputError

SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5) for sigma 1.5: the 11-tap window reaches 5 pixels
RANGE_SLACK = 1e-4  # tolerated excursion outside [0, data_range] (float rounding of a decoder's output)


def check_pair(preds: torch.Tensor, target: torch.Tensor, data_range: float, what: str) -> None:
    """Raise MetricInputError unless preds/target are float (B,3,H,W) of equal shape within [0, data_range]."""
    for name, x in (("reconstruction", preds), ("original", target)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise MetricInputError(f"{what}: {name} must be a (B,3,H,W) tensor, got {shape}")
        if not x.is_floating_point():
            raise MetricInputError(f"{what}: {name} must be a float tensor in [0, {data_range}], got {x.dtype}")
    if preds.shape != target.shape:
        raise MetricInputError(
            f"{what}: reconstruction shape {tuple(preds.shape)} != original shape {tuple(target.shape)}")
    slack = RANGE_SLACK * data_range
    for name, x in (("reconstruction", preds), ("original", target)):
        lo, hi = float(x.min()), float(x.max())
        if lo < -slack or hi > data_range + slack or math.isnan(lo) or math.isnan(hi):
            raise MetricInputError(
                f"{what}: {name} values span [{lo:.4g}, {hi:.4g}] but data_range is {data_range} "
                f"(expected values in [0, {data_range}]); scale or clamp the images first")


def psnr_per_image(preds: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each image: 10·log10(data_range² / MSE) over all pixels and channels.

    preds, target: (B,3,H,W) float in [0, data_range]. Returns (B,) float64; +inf where the images are identical.
    """
    check_pair(preds, target, data_range, "PSNR")
    return peak_signal_noise_ratio(
        preds.double(), target.double(), data_range=float(data_range), reduction="none", dim=(1, 2, 3)).cpu()


def gaussian_window(sigma: float = 1.5, radius: int = SSIM_RADIUS) -> np.ndarray:
    """Normalised 1-D Gaussian taps (2·radius+1,), float64: the separable SSIM window."""
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (d / sigma) ** 2)
    return g / g.sum()


def _ssim_maps_scipy(preds: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """SSIM map over the valid window positions, float64, with scipy's separable filter (fast on CPU)."""
    from scipy.ndimage import correlate1d

    x = preds.detach().cpu().double().numpy()
    y = target.detach().cpu().double().numpy()
    g = gaussian_window()
    stack = np.stack([x, y, x * x, y * y, x * y])  # (5,B,3,H,W)
    f = correlate1d(correlate1d(stack, g, axis=-1, mode="reflect"), g, axis=-2, mode="reflect")
    r = SSIM_RADIUS
    ux, uy, uxx, uyy, uxy = f[..., r:-r, r:-r]
    vx = np.clip(uxx - ux * ux, 0, None)
    vy = np.clip(uyy - uy * uy, 0, None)
    vxy = uxy - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    m = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return torch.from_numpy(m)


def _ssim_maps_torchmetrics(preds: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """The same SSIM map with torchmetrics (float64 grouped conv; used for tensors on an accelerator)."""
    _, ssim_map = structural_similarity_index_measure(
        preds.double(), target.double(), gaussian_kernel=True, sigma=1.5, kernel_size=11,
        data_range=float(data_range), k1=0.01, k2=0.03, reduction="none", return_full_image=True)
    # ssim_map: (B,3,H,W) on the reflect-padded image; keep only the valid window positions
    r = SSIM_RADIUS
    return ssim_map[..., r:-r, r:-r]


def ssim_per_image(preds: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0,
                   backend: str = "auto") -> torch.Tensor:
    """SSIM of each image (Wang et al. 2004): 11×11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03, averaged over
    the valid window positions (not the padded border) and the 3 channels. Equals scikit-image's
    `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=...,
    channel_axis=...)`; torchmetrics' own reduction also averages the reflect-padded border and differs slightly.

    preds, target: (B,3,H,W) float in [0, data_range], H and W > 11. Returns (B,) float64 on the CPU.
    backend: "torchmetrics" (float64 conv on the tensors' device), "scipy" (float64 separable filter on the
    CPU, ~30× faster there) or "auto" (scipy for CPU tensors, torchmetrics otherwise). Both give the same values.
    """
    check_pair(preds, target, data_range, "SSIM")
    if min(preds.shape[-2:]) <= 2 * SSIM_RADIUS + 1:
        raise MetricInputError(f"SSIM needs images larger than 11×11 pixels (the Gaussian window), got "
                               f"{tuple(preds.shape[-2:])}")
    if backend == "auto":
        backend = "scipy" if preds.device.type == "cpu" else "torchmetrics"
    if backend == "scipy":
        maps = _ssim_maps_scipy(preds, target, data_range)
    elif backend == "torchmetrics":
        maps = _ssim_maps_torchmetrics(preds, target, data_range)
    else:
        raise MetricInputError(f"SSIM backend must be 'auto', 'scipy' or 'torchmetrics', got {backend!r}")
    return maps.mean(dim=(1, 2, 3)).cpu()


def mean_of(values: Iterable[float]) -> float:
    """Mean of per-image values (the aggregate reported for PSNR, SSIM and LPIPS); +inf if any value is +inf."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan")
    return math.fsum(vals) / len(vals)
