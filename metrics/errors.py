"""Errors the metrics package raises on purpose.

`cascadekit.metrics` imports nothing else of cascadekit, so it has its own small hierarchy. Each class also
derives from the matching builtin (`FileNotFoundError`, `ValueError`) so callers that only know the builtins
still catch them.
"""
from __future__ import annotations


class MetricsError(Exception):
    """Base class of every error cascadekit.metrics raises on purpose."""


class MissingWeightsError(MetricsError, FileNotFoundError):
    """A backbone weight file (LPIPS AlexNet/VGG, FID Inception) is not on disk; the message names the file and
    the folder to put it in."""


class BadWeightsError(MetricsError, ValueError):
    """A backbone weight file exists but cannot be read safely or does not fit the network."""


class MetricInputError(MetricsError, ValueError):
    """Images given to a metric have the wrong shape, dtype or value range."""
