"""The ControlNet controls: Canny edges, inpainting (masked image + mask), super-resolution latents.

Images are float tensors (B, 3, H, W) in [0, 1]; masks are bool tensors (B, 1, H, W), True = repaint.

* :func:`canny` equals the official ``CannyFilter(resize=224)``: bilinear to 224² (``align_corners=False``,
  no antialias) -> uint8 by truncation (``x*255`` cast, HWC) -> ``cv2.Canny(img, 100, 200)`` -> /255 ->
  bilinear back to (H, W). :func:`canny_map` is the 224² uint8 intermediate (what a store keeps) and
  :func:`canny_from_map` the final resize, so ``canny = canny_from_map(canny_map(x), (H, W))``.
* :func:`inpaint_control` = ``cat(image with masked pixels set to 1, mask)``, (B, 4, H, W) (official
  ``InpaintFilter`` with a given mask). User masks: :func:`load_mask` (PNG, white = repaint),
  :func:`outpaint_mask` (a border). Generated training masks: :mod:`cascadekit.generator.train_masks`.
* :func:`sr_control` = EfficientNet latents nearest-upsampled ×2 (official ``SREffnetFilter``); with
  ``downscale=True`` (training) the image is first nearest-downscaled ×0.5, so the control of an H×W image
  is (B, 16, H/32, W/32) -- it lives at Stage C latent resolution. :func:`sr_latents` is the latent before the
  upsampling (what a store keeps) and :func:`sr_from_latents` the upsampling.

OpenCV (``opencv-python-headless``) is imported lazily inside :func:`canny_map` (a heavy dependency only
the Canny control needs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cascadekit.codec.errors import DependencyError, InputError
from cascadekit.codec.images import load_image
from cascadekit.codec.models.effnet import encode_pixels

CONTROLS = ("canny", "inpainting", "sr")
CANNY_RESIZE = 224
CANNY_THRESHOLDS = (100, 200)


def _check_images(images: torch.Tensor, what: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{what} must be a (B, 3, H, W) tensor in [0, 1], got {got}")


def canny_map(images: torch.Tensor, resize: int = CANNY_RESIZE) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, resize, resize) uint8 Canny edges (0 / 255) of the bilinear 224² image."""
    _check_images(images)
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise DependencyError("the Canny control needs OpenCV: pip install opencv-python-headless") from e
    small = F.interpolate(images.detach().float().cpu(), size=(resize, resize), mode="bilinear")
    hwc = small.mul(255).permute(0, 2, 3, 1).numpy().astype(np.uint8)  # truncation, as the official filter
    edges = [cv2.Canny(np.ascontiguousarray(im), *CANNY_THRESHOLDS) for im in hwc]
    return torch.from_numpy(np.stack(edges))


def canny_from_map(edges: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) uint8 edge maps -> (B, 1, H, W) float in [0, 1] (the official /255 + bilinear resize)."""
    x = edges.float().div(255).unsqueeze(1)
    return F.interpolate(x, size=tuple(size), mode="bilinear")


def canny(images: torch.Tensor, resize: int = CANNY_RESIZE) -> torch.Tensor:
    """The official Canny control: (B, 3, H, W) in [0, 1] -> (B, 1, H, W) in [0, 1] (CPU float32)."""
    return canny_from_map(canny_map(images, resize), images.shape[-2:])


# ------------------------------------------------------------------------------------------- inpainting


def inpaint_control(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``cat(images with masked pixels set to 1, mask)``: (B,3,H,W) + (B,1,H,W) bool -> (B,4,H,W) float."""
    _check_images(images)
    mask = check_mask(mask, images)
    m = mask.to(images.device)
    masked = torch.where(m, torch.ones_like(images), images)
    return torch.cat([masked, m.to(images.dtype)], dim=1)


def check_mask(mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """A bool (B|1, 1, H, W) mask matching the images' size, expanded to the batch (else InputError)."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[1] != 1:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"the mask must be a (B, 1, H, W) tensor, got {got}")
    if mask.shape[-2:] != images.shape[-2:]:
        raise InputError(f"the mask is {mask.shape[-1]}x{mask.shape[-2]} pixels but the image is "
                         f"{images.shape[-1]}x{images.shape[-2]}; give a mask of the image's size")
    if mask.shape[0] not in (1, images.shape[0]):
        raise InputError(f"got {mask.shape[0]} masks for {images.shape[0]} images; give one, or one per image")
    return (mask > 0.5 if mask.is_floating_point() else mask.bool()).expand(images.shape[0], -1, -1, -1)


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask image (PNG...; white = repaint, black = keep) -> (1, 1, H, W) bool (True where gray > 127).

    size (H, W): the size the mask must have (that of the image it belongs to); InputError otherwise.
    """
    img = load_image(path).convert("L")
    mask = torch.from_numpy(np.array(img) > 127)[None, None]
    if size is not None and tuple(mask.shape[-2:]) != tuple(size):
        raise InputError(f"mask {path} is {img.width}x{img.height} pixels but its image is {size[1]}x{size[0]}; "
                         "the mask must have the image's size (white = repaint)")
    return mask


def outpaint_mask(height: int, width: int, border: float = 0.125) -> torch.Tensor:
    """(1, 1, H, W) bool mask that repaints a border of ``border`` × each side (outpainting), keeps the centre."""
    if not 0 < border < 0.5:
        raise InputError(f"the outpaint border must be a fraction in (0, 0.5), got {border}")
    bh, bw = max(1, round(height * border)), max(1, round(width * border))
    mask = torch.ones(1, 1, height, width, dtype=torch.bool)
    mask[..., bh:height - bh, bw:width - bw] = False
    return mask


# ---------------------------------------------------------------------------------------- super-resolution


def sr_latents(images: torch.Tensor, effnet: torch.nn.Module, downscale: bool = True,
               scale: float = 0.5) -> torch.Tensor:
    """The EfficientNet latents behind the sr control (what a store keeps): (B, 16, h, w) float32.

    images (B, 3, H, W) in [0, 1]; effnet: the Stable Cascade EfficientNet encoder (takes ImageNet-normalised
    images). ``downscale=True`` (training): the image is nearest-downscaled by ``scale`` first, h = H·scale/32.
    """
    _check_images(images)
    x = F.interpolate(images, scale_factor=scale, mode="nearest") if downscale else images
    return encode_pixels(effnet, x)


def sr_from_latents(latents: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """(B, 16, h, w) -> (B, 16, h/scale, w/scale): the nearest upsampling of the official ``SREffnetFilter``."""
    return F.interpolate(latents, scale_factor=1 / scale, mode="nearest")


def sr_control(images: torch.Tensor, effnet: torch.nn.Module, downscale: bool = False,
               scale: float = 0.5) -> torch.Tensor:
    """EfficientNet latents of the images, nearest-upsampled by 1/scale (official ``SREffnetFilter``).

    ``downscale=True`` (training): nearest-downscale by ``scale`` first, so the result is (B, 16, H/32, W/32);
    ``False`` (inference, ``upscale``): the image is the low-resolution input and the result
    (B, 16, 2H/32, 2W/32) conditions a 2× larger output. ``= sr_from_latents(sr_latents(...))``.
    """
    return sr_from_latents(sr_latents(images, effnet, downscale, scale), scale)
