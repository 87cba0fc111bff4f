"""Preprocessing of one image for the encoder: load safely, filter by size, resize + centre crop.

Loading goes through :func:`cascadekit.codec.images.load_image` (EXIF orientation, any mode to RGB,
decompression-bomb guard, truncation detection). The result is a uint8 array (3, H, W) so DataLoader
workers ship 1 byte per value; the main process turns it into floats in [0, 1] on the device.

Aspect-ratio buckets follow the official Stable Cascade training setup: the ratios (w/h) of
``multi_aspect_ratio`` in ``configs/training/finetune_c_3b.yaml`` plus their reciprocals, each
turned into a size of about ``resolution**2`` pixels with both sides a multiple of 32 (one latent
cell), and each image goes to the bucket whose ratio is closest to its own.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from cascadekit.codec.errors import InputError
from cascadekit.codec.images import DEFAULT_MAX_PIXELS
from cascadekit.codec.input_files import DEFAULT_MAX_INPUT_BYTES

#: w/h ratios of the official multi-aspect training config; reciprocals are added.
OFFICIAL_ASPECT_RATIOS = (1 / 1, 1 / 2, 1 / 3, 2 / 3, 3 / 4, 1 / 5, 2 / 5, 3 / 5, 4 / 5, 1 / 6, 5 / 6, 9 / 16)
#: The encoder downsamples by 32: image sides are multiples of this so latents have whole cells.
SIZE_FACTOR = 32


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become encoder inputs.

    resolution: side of the square crop (and the pixel budget ``resolution**2`` of buckets).
    min_size: drop images whose shorter side (after EXIF rotation) is below this (reason ``too_small``).
    max_pixels: header pixel count above which an image is refused (``decompression_bomb``).
    buckets: use aspect-ratio buckets instead of the square crop.
    max_input_bytes: most bytes read from one input file or tar member (default 256 MiB); a larger one
        is skipped with reason ``too_large``. Recorded in ``to_dict`` only when not the default (so
        stores made before the cap existed still resume).
    """

    resolution: int = 768
    min_size: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # PIL's own limit, as load_image
    buckets: bool = False
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES

    def __post_init__(self):
        if self.resolution < SIZE_FACTOR or self.resolution % SIZE_FACTOR:
            raise InputError(f"resolution must be a positive multiple of {SIZE_FACTOR}, got {self.resolution}")
        if self.min_size is not None and self.min_size < 1:
            raise InputError(f"min_size must be >= 1, got {self.min_size}")
        if self.max_input_bytes < 1:
            raise InputError(f"max_input_bytes must be >= 1, got {self.max_input_bytes}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.max_input_bytes == DEFAULT_MAX_INPUT_BYTES:
            del d["max_input_bytes"]
        d["resample"] = "bicubic-antialiased"
        d["crop"] = "centre"
        if self.buckets:
            d["bucket_sizes"] = [list(s) for s in bucket_sizes(self.resolution)]
        return d


def bucket_ratios() -> list[float]:
    """The official ratios (w/h) plus their reciprocals, in a fixed order."""
    ratios = list(OFFICIAL_ASPECT_RATIOS)
    for r in OFFICIAL_ASPECT_RATIOS:
        if all(abs(1 / r - q) > 1e-9 for q in ratios):
            ratios.append(1 / r)
    return ratios


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """(H, W) of every bucket for a pixel budget of ``resolution**2`` (multiples of 32)."""
    density = resolution * resolution
    sizes = []
    for r in bucket_ratios():
        h = int(math.sqrt(density / r) // SIZE_FACTOR) * SIZE_FACTOR
        w = int(math.sqrt(density * r) // SIZE_FACTOR) * SIZE_FACTOR
        sizes.append((max(h, SIZE_FACTOR), max(w, SIZE_FACTOR)))
    return sizes


def choose_bucket(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The bucket (H, W) whose ratio is closest to ``width / height``."""
    ratios = bucket_ratios()
    i = int(np.argmin([abs(width / height - r) for r in ratios]))
    return bucket_sizes(resolution)[i]


def target_size(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(H, W) an image of ``width`` x ``height`` is cropped to under ``cfg``."""
    if cfg.buckets:
        return choose_bucket(width, height, cfg.resolution)
    return cfg.resolution, cfg.resolution


def load_and_prepare(src, cfg: PreprocessConfig, name: str | None = None):
    """Load ``src`` (path or bytes) and return ``(uint8 array (3,H,W), (orig_h, orig_w))``.

    Raises :class:`~cascadekit.codec.images.ImageInputError` (``.reason`` set) for unusable images,
    including ``too_small`` under ``cfg.min_size``, ``not_a_file`` for a path that is not a regular
    file and ``too_large`` above ``cfg.max_input_bytes``.
    """
    from cascadekit.codec.images import ImageInputError, load_image, resize_center_crop

    img = load_image(src, max_pixels=cfg.max_pixels, max_bytes=cfg.max_input_bytes)
    w, h = img.size
    if cfg.min_size is not None and min(w, h) < cfg.min_size:
        raise ImageInputError("too_small", f"image is {w}x{h}, shorter side below min_size={cfg.min_size}", name)
    img = resize_center_crop(img, target_size(w, h, cfg))
    arr = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()  # (3, H, W)
    return arr, (h, w)
