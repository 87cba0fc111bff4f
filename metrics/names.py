"""The metric names `evaluate` knows, and parsing a user's choice of them (no heavy imports: the CLI checks
``--metrics`` at parse time)."""
from __future__ import annotations

from collections.abc import Iterable

from .errors import MetricInputError

METRICS = ("psnr", "ssim", "lpips", "fid")
PER_IMAGE = ("psnr", "ssim", "lpips")


def parse_metrics(metrics: str | Iterable[str]) -> tuple[str, ...]:
    """'psnr,ssim' or an iterable of names -> validated tuple in canonical order."""
    names = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    bad = sorted(set(names) - set(METRICS))
    if bad or not names:
        raise MetricInputError(f"unknown metric(s) {bad or names}; choose from {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)
