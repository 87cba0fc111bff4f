"""cascadekit.codec: every official Stable Cascade network (Stage A, EfficientNet encoder, Previewer, Stage B,
Stage C), checkpoint loading, the shared diffusion core, image I/O and the :class:`Codec` API.

Public names load lazily, so ``import cascadekit.codec.errors`` (or a worker process) does not pay for
torchvision and every model module::

    from cascadekit.codec import Codec, load_weights, StageB
"""
from __future__ import annotations

from cascadekit.codec.lazy import lazy_exports

_EXPORTS = {
    "EfficientNetEncoder": "models", "EfficientNetEncoderConfig": "models", "Previewer": "models",
    "PreviewerConfig": "models", "StageA": "models", "StageAConfig": "models", "StageB": "models",
    "StageBConfig": "models", "StageC": "models", "StageCConfig": "models",
    "Codec": "codec", "default_image_size": "codec", "DECODE_SETTINGS": "codec",
    "SamplingSettings": "diffusion.settings",
    "ImageInputError": "images", "center_crop": "images", "imagenet_normalize": "images", "load_image": "images",
    "pil_to_tensor": "images", "resize_center_crop": "images", "resize_short_side": "images",
    "save_grid": "images", "tensor_to_pil": "images", "to_batch": "images",
    "check_finite": "precision", "parse_dtype": "precision", "stage_dtypes": "precision",
    "CascadeKitError": "errors", "DependencyError": "errors", "InputError": "errors", "PrecisionError": "errors", "WeightsError": "errors",
    "load_weights": "weights.load", "resolve_source": "weights.sources",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
