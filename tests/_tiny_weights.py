"""One tiny random weight set per test session, shared by the test modules that need it (read-only!)."""
from __future__ import annotations

import warnings
from pathlib import Path

_CACHE: dict[str, Path] = {}


def tiny_weights_dir(tmp_path_factory) -> Path:
    """Write ``write_tiny_weights(seed=0)`` once per session and return its folder. Do not modify it."""
    from cascadekit.codec.weights.tiny import write_tiny_weights

    key = str(tmp_path_factory.getbasetemp())
    if key not in _CACHE:
        d = tmp_path_factory.mktemp("tiny_weights")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_tiny_weights(d, seed=0)
        _CACHE[key] = d
    return _CACHE[key]


def mirror(src: Path, dst: Path, skip=()) -> Path:
    """A private folder of symlinks to the shared tiny set (caches written there stay private); ``skip`` leaves
    files out (e.g. to make a component missing)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("empty_caption.safetensors", *skip):
            (dst / f.name).symlink_to(f)
    return dst
