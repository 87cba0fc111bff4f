"""Controlled sampling: turn :class:`ControlSettings` into the ControlNet list Stage C consumes (official notebook).

Every check runs here, before any sampling: the control name, the ControlNet loaded for it, the control image
(missing / corrupt -> InputError naming the file), the mask (its size must be the control image's), strength.

* ``canny`` / ``inpainting``: the control image is fitted to the output size (short side resize + centre
  crop; a mask goes along, nearest) and filtered there (:func:`controls.canny`, :func:`controls.inpaint_control`).
  Inpainting also starts Stage C from the noised EfficientNet latents of that image (the pipeline's ``strength``).
* ``sr``: the control image is the low-resolution input, fitted to half the output size; its EfficientNet latents
  nearest-upsampled ×2 are the control (:func:`controls.sr_control`).

The list ``controlnet(control) * control_strength`` goes to the conditional **and** the unconditional branch
(official notebook: ``cnet_uncond = cnet``, both scaled by ``cnet_multiplier``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cascadekit.codec.errors import InputError
from cascadekit.codec.weights.controlnet import control_name
from cascadekit.generator import controls


@dataclass
class ControlSettings:
    """One controlled generation.

    control: 'canny' | 'inpainting' | 'sr'. image: the control image (path, PIL image or (1|B,3,H,W) tensor in
    [0,1]). mask (inpainting): path to a mask image (white = repaint), PIL image, or (1|B,1,H,W) bool tensor,
    of the control image's size; or ``outpaint=True`` to repaint a border of ``outpaint_border`` × each side.
    strength: the control strength (ControlNet output multiplier, official 1.0). paste_back (inpainting): keep
    the unmasked pixels of the image in the result.
    """

    control: str
    image: Any
    mask: Any = None
    outpaint: bool = False
    outpaint_border: float = 0.125
    strength: float = 1.0
    paste_back: bool = False

    def check(self) -> str:
        """The canonical control name; InputError for inconsistent settings."""
        name = control_name(self.control)
        if self.image is None:
            raise InputError(f"the {name} control needs a control image")
        if not 0 <= float(self.strength) <= 10:
            raise InputError(f"control strength must be in [0, 10], got {self.strength}")
        if name != "inpainting" and (self.mask is not None or self.outpaint or self.paste_back):
            raise InputError(f"mask / outpaint / paste_back belong to the inpainting control, not {name}")
        if name == "inpainting" and (self.mask is None) == (not self.outpaint):
            raise InputError("the inpainting control needs exactly one of a mask (white = repaint) or outpaint")
        return name


@dataclass
class PreparedControl:
    """cnet: the scaled ControlNet list; preview (B,3,H,W) CPU: the control image to save; init_images
    (B,3,H,W) or None: the image whose noised latents start Stage C; mask (B,1,H,W) bool or None (paste-back)."""

    name: str
    cnet: list
    preview: torch.Tensor
    init_images: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def fit(x: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize (B,C,H,W) so it covers height x width, then centre-crop to it (identity when the size already fits)."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    if mode == "nearest":
        y = F.interpolate(x.float(), size=(nh, nw), mode="nearest")
    else:
        y = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (nh - height) // 2, (nw - width) // 2
    return y[..., top:top + height, left:left + width]


def _mask(settings: ControlSettings, images: torch.Tensor) -> torch.Tensor:
    h, w = images.shape[-2:]
    if settings.outpaint:
        return controls.outpaint_mask(h, w, settings.outpaint_border)
    m = settings.mask
    if isinstance(m, (str, Path)):
        return controls.load_mask(m, size=(h, w))
    if not isinstance(m, torch.Tensor):  # a PIL image
        m = torch.from_numpy(np.asarray(m.convert("L")) > 127)[None, None]
    return controls.check_mask(m, images)


def prepare_control(settings: ControlSettings, controlnet: torch.nn.Module | None, served: str | None,
                    load_images, effnet: torch.nn.Module, n: int, height: int, width: int) -> PreparedControl:
    """Check everything and build the ControlNet list for n outputs of height x width pixels (module docstring).

    load_images(images, n, what) -> (n,3,H,W) tensor in [0,1] (the pipeline's loader, clear errors for bad files).
    served: the control the loaded ControlNet serves.
    """
    name = settings.check()
    if controlnet is None:
        raise InputError(f"the {name} control needs a ControlNet: load one (controlnet=FILE_OR_FOLDER)")
    if served != name:
        raise InputError(f"the loaded ControlNet is a {served} ControlNet; load the {name} one for this control")
    images = load_images(settings.image, n, "control image").float()
    mask = None
    if name == "inpainting":
        mask = fit(_mask(settings, images).float(), height, width, mode="nearest").expand(n, -1, -1, -1) > 0.5
    if name == "sr":
        images = fit(images, max(1, height // 2), max(1, width // 2))
        control = controls.sr_control(images, effnet)
        preview = F.interpolate(images, scale_factor=2, mode="nearest")
    else:
        images = fit(images, height, width)
        control = controls.canny(images) if name == "canny" else controls.inpaint_control(images, mask)
        preview = control.expand(-1, 3, -1, -1) if name == "canny" else control[:, :3]
    weight = next(controlnet.parameters())
    with torch.no_grad():
        raw = controlnet(control.to(weight.device, weight.dtype))
    cnet = [c * float(settings.strength) if c is not None else None for c in raw]
    return PreparedControl(name=name, cnet=cnet, preview=preview.float().cpu(),
                           init_images=images if name == "inpainting" else None, mask=mask)


def paste_back(generated: torch.Tensor, prepared: PreparedControl) -> torch.Tensor:
    """The generated pixels where the mask repaints, the control image's pixels elsewhere ((B,3,H,W) in [0,1])."""
    original = prepared.init_images.to(generated.device, generated.dtype)
    mask = prepared.mask.to(generated.device)
    if original.shape != generated.shape:
        raise InputError(f"paste_back: the result {tuple(generated.shape)} and the image {tuple(original.shape)} differ")
    return torch.where(mask, generated, original)
