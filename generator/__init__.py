"""cascadekit.generator: Stage C, training on precomputed latents, LoRA, text-to-image.

Public names load lazily::

    from cascadekit.generator import StageC, TrainConfig, train, TextToImagePipeline
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "StageC": "stage_c", "StageCConfig": "stage_c",
    "TrainConfig": "config", "train": "train",
    "TextToImagePipeline": "pipeline",
    "apply_lora": "lora", "save_lora": "lora", "load_lora": "lora", "merge_lora": "lora",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
