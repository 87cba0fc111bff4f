"""Previewer: a small conv decoder from Stage C latents to a low-resolution RGB preview (×8).

(B, 16, 24, 24) -> (B, 3, 192, 192). Output roughly in [0, 1] (not clamped). Official layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cascadekit.codec.models.config import ModelConfig
from cascadekit.codec.models.presets import infer_preset_of


@dataclass
class PreviewerConfig(ModelConfig):
    """The official ``Previewer`` constructor arguments. Presets: ``official`` and ``tiny``."""

    c_in: int = 16
    c_hidden: int = 512
    c_out: int = 3

    PRESETS = {"official": {}, "tiny": dict(c_hidden=32)}


def _stage(c_in: int, c_out: int, conv: nn.Module) -> list[nn.Module]:
    return [conv, nn.GELU(), nn.BatchNorm2d(c_out)]


class Previewer(nn.Module):
    """Eight conv/GELU/BatchNorm stages (three ×2 transposed convs) and a final 1x1 conv (``blocks.0..24``)."""

    def __init__(self, c_in: int = 16, c_hidden: int = 512, c_out: int = 3):
        super().__init__()
        h, h2, h4 = c_hidden, c_hidden // 2, c_hidden // 4
        self.blocks = nn.Sequential(
            *_stage(c_in, h, nn.Conv2d(c_in, h, kernel_size=1)),
            *_stage(h, h, nn.Conv2d(h, h, kernel_size=3, padding=1)),
            *_stage(h, h2, nn.ConvTranspose2d(h, h2, kernel_size=2, stride=2)),  # x2
            *_stage(h2, h2, nn.Conv2d(h2, h2, kernel_size=3, padding=1)),
            *_stage(h2, h4, nn.ConvTranspose2d(h2, h4, kernel_size=2, stride=2)),  # x4
            *_stage(h4, h4, nn.Conv2d(h4, h4, kernel_size=3, padding=1)),
            *_stage(h4, h4, nn.ConvTranspose2d(h4, h4, kernel_size=2, stride=2)),  # x8
            *_stage(h4, h4, nn.Conv2d(h4, h4, kernel_size=3, padding=1)),
            nn.Conv2d(h4, c_out, kernel_size=1),
        )

    @classmethod
    def from_config(cls, cfg: PreviewerConfig) -> "Previewer":
        return cls(**cfg.kwargs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, c_in, h, w) -> (B, c_out, 8h, 8w)."""
        return self.blocks(x)


def infer_preset(state_dict) -> PreviewerConfig:
    """Recognise an official-layout Previewer state dict as ``official`` or ``tiny`` (else WeightsError)."""
    return infer_preset_of(Previewer, PreviewerConfig, state_dict, "Previewer")
