"""Stage B's EfficientNet condition recomputed every step, as the official trainer does (``--on-the-fly-effnet``).

Per sample a factor f ~ U(0.5, 1) is drawn from the update's seeded generator (so resume stays exact; the
official trainer draws one f per batch from numpy's global state), the crop is nearest-downscaled to
``int(side * f // 32 * 32)`` per side and encoded by the EfficientNet (:func:`cascadekit.datasets.effnet_scales.latents_at`).
The crop's pixels come from the store's ``control_inpaint`` field (its exact uint8 pixels, lossless;
``--controls inpaint``). The latents are then resized to Stage B's patch grid as Stage B itself resizes them,
so samples of different f share a batch (as for the stored scales).
"""
from __future__ import annotations

from typing import Any

import torch

from cascadekit.codec.errors import InputError
from cascadekit.codec.models.blocks import interpolate_fp32
from cascadekit.datasets import effnet_scales as ES
from cascadekit.generator.stage_b_data import PIXELS_FIELD

LOW, HIGH = 0.5, 1.0  # the official f ~ U(0.5, 1)


class OnTheFlyEffnet:
    """The EfficientNet condition of a batch from its stored pixels at per-sample random scales.

    encoder: a ``Codec`` with the EfficientNet (``components=("effnet",)``) or the EfficientNet module itself.
    """

    def __init__(self, encoder: Any):
        self.encoder = encoder

    def describe(self) -> str:
        return (f"recomputed on the fly from the stored crop pixels ({PIXELS_FIELD}) at f ~ U({LOW}, {HIGH}) per "
                "sample, sides snapped down to multiples of 32 (official train_b); stored latents / scales unused")

    def problems(self, data: Any) -> list[str]:
        """Why the condition cannot be recomputed for ``data`` (a StageBData); empty: fine."""
        if PIXELS_FIELD not in data.fields and getattr(data, "pixels", True) is False:
            return [f"--on-the-fly-effnet needs the crops' pixels, but the training data was opened without them: "
                    f"StageBData({str(data.path)!r}, pixels=True)"]
        if PIXELS_FIELD not in data.fields:
            return [f"--on-the-fly-effnet recomputes the EfficientNet condition from the crops' pixels, which the "
                    f"store {data.path} lacks (field {PIXELS_FIELD}, the exact crop pixels): add them with "
                    f"`cascadekit add-controls STORE --controls inpaint` (or encode with --controls inpaint), or "
                    f"train from stored scales instead (`add-controls STORE --effnet-scales 0.5,0.75,1.0`)"]
        if ES.effnet_module(self.encoder) is None:
            return ["--on-the-fly-effnet needs the EfficientNet encoder: pass --image-encoder WEIGHTS (a weights "
                    "folder / hub id with the EfficientNet) or --init a weights folder that has it"]
        errs = []
        for g in data.groups:
            hw = tuple(4 * s for s in g.shape[1:])  # the crop: Stage A latents are H/4 x W/4
            try:
                ES.check_fits([LOW], hw, f"group {g.name!r}: ")
            except InputError as e:
                errs.append(f"{e} (--on-the-fly-effnet draws f down to {LOW})")
        return errs

    def draw(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """(n,) float64 factors in [0.5, 1) from ``generator``."""
        return LOW + (HIGH - LOW) * torch.rand(n, generator=generator, dtype=torch.float64)

    def condition(self, pixels: torch.Tensor, factors: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int],
                  channels: int = 16) -> torch.Tensor:
        """(B, channels, *grid) float32 on the CPU: the latents of uint8 ``pixels`` (B, 3, H, W) downscaled by
        ``factors`` (B,), resized to ``grid``; zeros where ``keep`` (B,) bool is False (effnet dropout; those
        samples are not encoded)."""
        sizes = [ES.scaled_size(pixels.shape[-2:], float(f)) for f in factors.tolist()]
        kept = keep.tolist()
        out = torch.zeros(pixels.shape[0], channels, *grid)
        for size in sorted({s for s, k in zip(sizes, kept) if k}):
            rows = torch.tensor([i for i, (s, k) in enumerate(zip(sizes, kept)) if k and s == size])
            lat = ES.latents_at(pixels[rows].float().div(255.0), self.encoder, size).cpu()
            out[rows] = interpolate_fp32(lat, size=grid)
        return out


__all__ = ["OnTheFlyEffnet"]
