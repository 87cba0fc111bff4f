"""The official saliency masks for inpainting-ControlNet training (needs the official ``saliency_model.pt``).

``MicroResNet`` has the official architecture and key layout (``modules/cnet_modules/inpainting/saliency_model.py``
of Stability-AI/StableCascade): a small reflect-padded conv net with InstanceNorm, (B,3,H,W) in [0,1] ->
(B,1,H/8,W/8) saliency in (0,1). :func:`load_saliency_model` reads the file with ``torch.load(weights_only=True)``
(never unpickles code). :func:`saliency_masks` follows the official ``InpaintFilter``: short side resized to 240
(antialias), saliency > t with t ~ U(0.04, 0.4), inverted with p 0.4 (outpainting), nearest to the image size,
Gaussian blur (kernel 141, capped at ``2·min(H, W) − 1`` for small images) > 0.5. The threshold and the inversion
are drawn **per sample** (the official filter draws them once per batch).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from cascadekit.codec.weights.assign import build
from cascadekit.codec.weights.io import read_state_dict

THRESHOLDS = (0.04, 0.4)
P_OUTPAINT = 0.4
BLUR_KERNEL = 141
SALIENCY_SIZE = 240


def _conv_in(c_in: int, c_out: int, k: int, stride: int = 1, pad: int = 1) -> list[nn.Module]:
    return [nn.ReflectionPad2d(pad), nn.Conv2d(c_in, c_out, kernel_size=k, stride=stride),
            nn.InstanceNorm2d(c_out, affine=True)]


class SaliencyResBlock(nn.Module):
    """x + [pad, conv3, IN, ReLU, pad, conv3, IN](x) on (B, c, H, W)."""

    def __init__(self, c: int):
        super().__init__()
        self.resblock = nn.Sequential(*_conv_in(c, c, 3), nn.ReLU(), *_conv_in(c, c, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.resblock(x)


class _Nearest2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


class MicroResNet(nn.Module):
    """Official saliency network: (B, 3, H, W) in [0, 1] -> (B, 1, ~H/8, ~W/8) in (0, 1)."""

    def __init__(self):
        super().__init__()
        self.downsampler = nn.Sequential(
            *_conv_in(3, 8, 9, stride=4, pad=4), nn.ReLU(),
            *_conv_in(8, 16, 3, stride=2), nn.ReLU(),
            *_conv_in(16, 32, 3, stride=2), nn.ReLU(),
        )
        self.residual = nn.Sequential(
            SaliencyResBlock(32), nn.Conv2d(32, 64, kernel_size=1, bias=False, groups=32), SaliencyResBlock(64),
        )
        self.segmentator = nn.Sequential(
            *_conv_in(64, 16, 3), nn.ReLU(), _Nearest2x(),
            nn.ReflectionPad2d(4), nn.Conv2d(16, 1, kernel_size=9), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentator(self.residual(self.downsampler(x)))


def load_saliency_model(path: str | Path, device: str | torch.device = "cpu") -> MicroResNet:
    """The official ``saliency_model.pt`` (or a safetensors copy) as a frozen MicroResNet in eval mode."""
    state = read_state_dict(path)  # .pt through torch.load(weights_only=True)
    return build(MicroResNet, state, device=device, name=f"saliency model ({path})").requires_grad_(False)


def saliency_masks(images: torch.Tensor, model: MicroResNet, generator: torch.Generator,
                   thresholds: tuple[float, float] = THRESHOLDS, p_outpaint: float = P_OUTPAINT) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W) bool repaint masks on the CPU (module docstring).

    Computed on the model's device (the blur's 141² kernel is costly at training resolutions on a CPU: keep the
    model on the accelerator when there is one); ``generator`` is a CPU generator (the draws are the same anywhere).
    """
    b, _, h, w = images.shape
    weight = next(model.parameters())
    with torch.no_grad():
        sal = model(TF.resize(images.to(weight.device, weight.dtype), SALIENCY_SIZE, antialias=True)).float()
    lo, hi = thresholds
    t = (lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=generator)).to(sal.device)
    invert = (torch.rand(b, 1, 1, 1, generator=generator) < p_outpaint).to(sal.device)
    masks = (sal > t) ^ invert
    masks = F.interpolate(masks.float(), size=(h, w), mode="nearest")
    k = min(BLUR_KERNEL, 2 * min(h, w) - 1)
    k -= 1 - k % 2  # odd
    return (TF.gaussian_blur(masks, k) > 0.5).cpu()
