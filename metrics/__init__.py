"""cascadekit.metrics: reconstruction quality metrics (PSNR, SSIM, LPIPS, FID) and reports.

Stands alone: imports nothing else of cascadekit. Public names are loaded lazily (torchmetrics, lpips and
torch-fidelity are only imported when used), see docs/metrics.md:

    from cascadekit.metrics import evaluate, psnr_per_image, ssim_per_image, LPIPSMetric, fid_folders
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate": "evaluate", "check_weights": "evaluate", "parse_metrics": "evaluate",
    "psnr_per_image": "pixel", "ssim_per_image": "pixel", "mean_of": "pixel",
    "LPIPSMetric": "lpips_metric",
    "InceptionFeatures": "fid", "FeatureStats": "fid", "frechet_distance": "fid", "save_stats": "fid",
    "load_stats": "fid", "fid_folders": "fid", "folder_stats": "fid",
    "find_weights": "weights",
    "read_image": "images",
    "MetricsError": "errors", "MissingWeightsError": "errors", "BadWeightsError": "errors",
    "MetricInputError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
