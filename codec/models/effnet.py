"""EfficientNetV2-S encoder: images -> the 16-channel semantic latent Stage B and Stage C work in.

Input: ImageNet-normalised images (B, 3, H, W) (``(x - mean) / std`` with mean (0.485, 0.456, 0.406),
std (0.229, 0.224, 0.225)); the official resolution is 768×768 -> (B, 16, 24, 24) (stride 32).
The backbone is torchvision's ``efficientnet_v2_s`` feature extractor built with ``weights=None``
(nothing is downloaded); the released checkpoint supplies every weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from cascadekit.codec.images import imagenet_normalize
from cascadekit.codec.models.config import ModelConfig
from cascadekit.codec.models.presets import infer_preset_of


@dataclass
class EfficientNetEncoderConfig(ModelConfig):
    """The official ``EfficientNetEncoder`` constructor arguments (only ``c_latent``). Preset: ``official``."""

    c_latent: int = 16

    PRESETS = {"official": {}}


class EfficientNetEncoder(nn.Module):
    """``mapper(backbone(x))``: EfficientNetV2-S features (B,1280,H/32,W/32) -> 1x1 conv -> BatchNorm (no affine)."""

    def __init__(self, c_latent: int = 16):
        super().__init__()
        self.backbone = torchvision.models.efficientnet_v2_s(weights=None).features
        self.mapper = nn.Sequential(
            nn.Conv2d(1280, c_latent, kernel_size=1, bias=False),
            nn.BatchNorm2d(c_latent, affine=False),
        )

    @classmethod
    def from_config(cls, cfg: EfficientNetEncoderConfig) -> "EfficientNetEncoder":
        return cls(**cfg.kwargs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) ImageNet-normalised -> (B, c_latent, H/32, W/32)."""
        return self.mapper(self.backbone(x))


def encode_pixels(effnet: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """EfficientNet latents (B, 16, H/32, W/32) float32, on ``effnet``'s device, of ``images`` (B, 3, H, W) in
    [0, 1] already at the size to encode: ImageNet-normalised in float32 on the weights' device, then fed in the
    weights' dtype. No gradient: the result is a condition (not inference_mode, so autograd may consume it)."""
    weight = next(effnet.parameters())
    with torch.no_grad():
        return effnet(imagenet_normalize(images.to(weight.device, torch.float32)).to(weight.dtype)).float()


def infer_preset(state_dict) -> EfficientNetEncoderConfig:
    """Check that a state dict is an official effnet encoder (else WeightsError)."""
    return infer_preset_of(EfficientNetEncoder, EfficientNetEncoderConfig, state_dict, "EfficientNet encoder")
