"""The control a ControlNet trains with, per batch: from the store's precomputed field, or computed on the fly.

* Stored (``encode --controls`` / ``add-controls``): canny = the 224² uint8 map -> /255 + bilinear to the image
  size (the official ``CannyFilter``'s last step); sr = the stored ×0.5 latents -> nearest ×2 (``SREffnetFilter``);
  inpainting = the stored crop pixels (+ the drawn mask) -> ``cat(image with masked pixels 1, mask)``.
  No filter and no image encoder run in the loop.
* On the fly (the store lacks the field): the crops are read again from the stored ``source`` files and prepared
  as ``encode`` prepared them, then filtered (Canny / the EfficientNet for sr) every step — slower.

The image size of a latent (16, h, w) is (32h, 32w): the image the EfficientNet saw.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cascadekit.codec.errors import InputError
from cascadekit.datasets.access import LatentStore
from cascadekit.datasets.controls import _sr_latents, is_file_source, load_crops, preprocess_of
from cascadekit.generator.controls import canny_from_map, canny_map, inpaint_control, sr_from_latents
from cascadekit.generator.tasks.controlnet_config import STORE_FIELD
from cascadekit.generator.saliency import MicroResNet, saliency_masks
from cascadekit.generator.train_masks import random_masks


def _add_controls_hint(control: str) -> str:
    name = "inpaint" if control == "inpainting" else control
    return f"`cascadekit add-controls STORE --controls {name}` (or `encode ... --controls {name}`)"


def control_source_problems(data: Any, control: str, image_encoder: Any) -> list[str]:
    """Why ``control`` can neither be read from the store nor computed on the fly (empty: fine)."""
    if STORE_FIELD[control] in data.fields:
        return []
    where = f"the store has no precomputed {control} control ({STORE_FIELD[control]})"
    if "source" not in data.fields or not hasattr(data, "read"):
        return [f"{where} and no source paths to compute it from; add it with {_add_controls_hint(control)}"]
    first = [data.read(g.name, [0])["source"][0] for g in data.groups]
    unreadable = [s for s in first if not is_file_source(s)]
    if unreadable:
        return [f"{where}, and its images cannot be read again to compute it on the fly (source "
                f"{unreadable[0]!r} is not a file: tar members and in-memory images are read only by encode); "
                f"precompute it with `cascadekit encode ... --controls` from the original inputs"]
    if control == "sr" and image_encoder is None:
        return [f"{where}; computing it on the fly needs the EfficientNet encoder (pass --image-encoder WEIGHTS), "
                f"or precompute it with {_add_controls_hint(control)}"]
    return []


class ControlInputs:
    """Makes the (B, c_in, H, W) control of a store batch (module docstring)."""

    def __init__(self, data: Any, control: str, image_encoder: Any = None, saliency: MicroResNet | None = None):
        """saliency: the official saliency model (:func:`~cascadekit.generator.saliency.load_saliency_model`)
        for the official inpainting masks; None: geometric masks."""
        self.kind, self.encoder = control, image_encoder
        self.saliency = saliency
        self.field = STORE_FIELD[control]
        self.stored = self.field in data.fields
        self.preprocess = None if self.stored else preprocess_of(LatentStore(data.path).attrs)

    def describe(self) -> str:
        if self.stored:
            return f"precomputed in the store ({self.field}; no filter or encoder in the loop)"
        return ("computed on the fly from the source images (the store has no precomputed "
                f"{self.field}: slower; precompute it with {_add_controls_hint(self.kind)})")

    def masks(self, n: int, h: int, w: int, generator: torch.Generator, p_outpaint: float) -> torch.Tensor:
        """(n, 1, h, w) bool geometric inpainting masks (:mod:`cascadekit.generator.train_masks`); with the
        official saliency model, (n,) seeds of each sample's saliency-mask draws (the masks need the image)."""
        self.p_outpaint = p_outpaint
        if self.saliency is not None:
            return torch.randint(0, 2**62, (n,), generator=generator)
        return random_masks(n, h, w, generator, p_outpaint)

    def _saliency_masks(self, pixels: torch.Tensor, seeds: torch.Tensor, device: torch.device) -> torch.Tensor:
        self.saliency.to(device)  # the saliency net and its 141² blur run on the training device (in place, once)
        return torch.cat([saliency_masks(pixels[i:i + 1], self.saliency, torch.Generator().manual_seed(int(s)),
                                         p_outpaint=self.p_outpaint) for i, s in enumerate(seeds.tolist())])

    def _crops(self, batch: dict[str, Any]) -> torch.Tensor:
        crops, reasons = load_crops(list(batch["source"]), self.preprocess)
        bad = [(s, r) for s, r in zip(batch["source"], reasons) if r]
        if bad:
            raise InputError(f"cannot compute the {self.kind} control on the fly: {bad[0][0]} ({bad[0][1]}); "
                             f"precompute it with {_add_controls_hint(self.kind)}")
        return crops

    def control(self, batch: dict[str, Any], size: tuple[int, int], mask: torch.Tensor | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
        """The float32 control (CPU) of ``batch`` for images of ``size`` (H, W); ``mask`` (B,1,H,W) for inpainting
        (with the saliency model: the per-sample seeds; its masks are drawn on ``device``)."""
        if self.kind == "canny":
            edges = batch[self.field] if self.stored else canny_map(self._crops(batch).float().div(255))
            return canny_from_map(edges, size)
        if self.kind == "sr":
            lat = batch[self.field].float() if self.stored else \
                _sr_latents(self.encoder, self._crops(batch).float().div(255)).float().cpu()
            return sr_from_latents(lat)
        pixels = (batch[self.field] if self.stored else self._crops(batch)).float().div(255)
        if tuple(pixels.shape[-2:]) != tuple(size):  # crop != encoder input: resize as the encoder did
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
        if self.saliency is not None:
            mask = self._saliency_masks(pixels, mask, torch.device(device))
        return inpaint_control(pixels, mask)


__all__ = ["ControlInputs", "control_source_problems"]
