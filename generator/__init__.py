"""cascadekit.generator: Stage C, training on precomputed latents, LoRA, text-to-image.

Public names load lazily::

    from cascadekit.generator import StageC, TrainConfig, TextToImagePipeline
    from cascadekit.generator.train import train   # (the name ``train`` is the submodule on the package)
"""
from __future__ import annotations

from cascadekit.codec.lazy import lazy_exports

_EXPORTS = {
    "StageC": "stage_c", "StageCConfig": "stage_c",
    "ControlNet": "controlnet", "ControlNetConfig": "controlnet", "ControlSettings": "control_sampling",
    "TrainConfig": "config",
    "TextToImagePipeline": "pipeline",
    "apply_lora": "lora", "save_lora": "lora", "load_lora": "lora", "merge_lora": "lora",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
