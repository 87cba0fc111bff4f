"""Stable Cascade network modules: building blocks, Stage A, EfficientNet encoder, Previewer, Stage B, Stage C."""
from cascadekit.codec.models.effnet import EfficientNetEncoder, EfficientNetEncoderConfig
from cascadekit.codec.models.previewer import Previewer, PreviewerConfig
from cascadekit.codec.models.stage_a import StageA, StageAConfig, VectorQuantize
from cascadekit.codec.models.stage_b import StageB, StageBConfig
from cascadekit.codec.models.stage_c import StageC, StageCConfig

__all__ = [
    "EfficientNetEncoder",
    "EfficientNetEncoderConfig",
    "Previewer",
    "PreviewerConfig",
    "StageA",
    "StageAConfig",
    "StageB",
    "StageBConfig",
    "StageC",
    "StageCConfig",
    "VectorQuantize",
]
