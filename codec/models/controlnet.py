"""The official Stable Cascade ControlNet for Stage C (canny, inpainting, super-resolution).

``ControlNet(c_in, c_proj, proj_blocks, bottleneck_mode)(x)``: a control image / latent x (B, c_in, H, W)
-> a list of ``max(proj_blocks) + 1`` slots; slot ``proj_blocks[i]`` holds ``projections[i](backbone(x))``
(B, c_proj, h, w), every other slot is ``None``. Stage C consumes the list with ``cnet=``: one item per
ResBlock call (repeats included), resized bilinearly to x and added before the block.

Bottlenecks (official key layout, see ``../shared/reference/manifests/controlnet_*.json``):

* ``effnet``: torchvision's EfficientNetV2-S features (built with ``weights=None``: nothing is downloaded);
  when ``c_in != 3`` the first conv is ``Conv2d(c_in, 24, 3, stride 2, bias=False)``. Output 1280 channels
  at stride 32. :func:`init_effnet_backbone` applies the official ImageNet start (channel copy rule).
* ``simple``: ``Conv3x3(c_in, 4c_in) -> LeakyReLU(0.2) -> Conv3x3(4c_in, c_in)``; output c_in channels.
* ``large``: ``Conv1x1(c_in, W1) -> LeakyReLU(0.2) -> Conv1x1(W1, W2) -> 8 x CNetResBlock(W2) -> Conv1x1(W2, E)``
  with ``large_widths = (W1, W2, E) = (16384, 1024, 1280)`` officially (other widths only for tests).

Each projection is ``Conv1x1(E, E, no bias) -> LeakyReLU(0.2) -> Conv1x1(E, c_proj, no bias)``; the last
conv starts at zero (official init), so a fresh ControlNet leaves Stage C unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torchvision
from torch import nn

from cascadekit.codec.errors import InputError
from cascadekit.codec.models.blocks import ResBlock
from cascadekit.codec.models.config import ModelConfig

BOTTLENECK_MODES = ("effnet", "simple", "large")
OFFICIAL_LARGE_WIDTHS = (16384, 1024, 1280)
# the official controlnet_blocks for the 3.6B Stage C (64 ResBlock calls)
OFFICIAL_PROJ_BLOCKS = (0, 4, 8, 12, 51, 55, 59, 63)
OFFICIAL_RESBLOCK_CALLS = 64
EFFNET_CHANNELS = 1280


@dataclass
class ControlNetConfig(ModelConfig):
    """The official ``ControlNet`` constructor arguments (+ ``large_widths`` for small test models).

    Presets: the three released files ``canny`` (c_in 1), ``inpainting`` (c_in 4: masked RGB + mask),
    ``super_resolution`` (c_in 16: EfficientNet latents, large bottleneck).
    """

    c_in: int = 3
    c_proj: int = 2048
    proj_blocks: list = field(default_factory=lambda: list(OFFICIAL_PROJ_BLOCKS))
    bottleneck_mode: str = "effnet"
    large_widths: list = field(default_factory=lambda: list(OFFICIAL_LARGE_WIDTHS))

    PRESETS = {
        "canny": dict(c_in=1),
        "inpainting": dict(c_in=4),
        "super_resolution": dict(c_in=16, bottleneck_mode="large"),
    }


class LayerNorm2dAffine(nn.LayerNorm):
    """``nn.LayerNorm`` over the channels of a (B, C, H, W) tensor (affine, eps 1e-5: the official ControlNet's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CNetResBlock(nn.Module):
    """``x + [LN, GELU, Conv3x3, LN, GELU, Conv3x3](x)`` on (B, c, H, W) (the large bottleneck's block)."""

    def __init__(self, c: int):
        super().__init__()
        self.blocks = nn.Sequential(
            LayerNorm2dAffine(c), nn.GELU(), nn.Conv2d(c, c, kernel_size=3, padding=1),
            LayerNorm2dAffine(c), nn.GELU(), nn.Conv2d(c, c, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.blocks(x)


def _effnet_backbone(c_in: int) -> nn.Sequential:
    backbone = torchvision.models.efficientnet_v2_s(weights=None).features
    if c_in != 3:
        backbone[0][0] = nn.Conv2d(c_in, 24, kernel_size=3, stride=2, bias=False)
    return backbone


def _large_backbone(c_in: int, widths: Sequence[int]) -> nn.Sequential:
    w1, w2, e = widths
    return nn.Sequential(
        nn.Conv2d(c_in, w1, kernel_size=1), nn.LeakyReLU(0.2),
        nn.Conv2d(w1, w2, kernel_size=1),
        *[CNetResBlock(w2) for _ in range(8)],
        nn.Conv2d(w2, e, kernel_size=1),
    )


class ControlNet(nn.Module):
    """Official Stable Cascade ControlNet (key names and shapes equal the released checkpoints)."""

    def __init__(self, c_in: int = 3, c_proj: int = 2048, proj_blocks: Sequence[int] | None = None,
                 bottleneck_mode: str | None = None, large_widths: Sequence[int] = OFFICIAL_LARGE_WIDTHS):
        super().__init__()
        bottleneck_mode = bottleneck_mode or "effnet"
        if bottleneck_mode not in BOTTLENECK_MODES:
            raise ValueError(f"unknown bottleneck_mode {bottleneck_mode!r}; choose one of {', '.join(BOTTLENECK_MODES)}")
        if not proj_blocks or min(proj_blocks) < 0 or len(set(proj_blocks)) != len(proj_blocks):
            raise ValueError(f"proj_blocks must be distinct ResBlock-call indices >= 0, got {proj_blocks!r}")
        if len(large_widths) != 3:
            raise ValueError(f"large_widths must be (W1, W2, E), got {large_widths!r}")
        self.proj_blocks = list(proj_blocks)
        self.bottleneck_mode = bottleneck_mode
        if bottleneck_mode == "effnet":
            self.backbone, embd = _effnet_backbone(c_in), EFFNET_CHANNELS
        elif bottleneck_mode == "simple":
            self.backbone, embd = nn.Sequential(
                nn.Conv2d(c_in, c_in * 4, kernel_size=3, padding=1), nn.LeakyReLU(0.2),
                nn.Conv2d(c_in * 4, c_in, kernel_size=3, padding=1),
            ), c_in
        else:
            self.backbone, embd = _large_backbone(c_in, large_widths), int(large_widths[2])
        self.projections = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(embd, embd, kernel_size=1, bias=False), nn.LeakyReLU(0.2),
                nn.Conv2d(embd, c_proj, kernel_size=1, bias=False),
            )
            for _ in self.proj_blocks
        )
        for proj in self.projections:
            nn.init.zeros_(proj[-1].weight)  # official: zero output projection

    @classmethod
    def from_config(cls, cfg: ControlNetConfig) -> "ControlNet":
        return cls(**cfg.kwargs())

    @property
    def c_in(self) -> int:
        first = self.backbone[0][0] if self.bottleneck_mode == "effnet" else self.backbone[0]
        return first.in_channels

    @property
    def c_proj(self) -> int:
        return self.projections[0][-1].out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        """x (B, c_in, H, W) -> list of max(proj_blocks)+1 slots, (B, c_proj, h, w) tensors or None.

        h, w: H/32, W/32 for ``effnet``; H, W otherwise.
        """
        if x.dim() != 4 or x.shape[1] != self.c_in:
            raise InputError(f"ControlNet expects a (B, {self.c_in}, H, W) control, got {tuple(x.shape)}")
        feats = self.backbone(x.to(self.projections[0][0].weight.dtype))
        out: list[torch.Tensor | None] = [None] * (max(self.proj_blocks) + 1)
        for proj, slot in zip(self.projections, self.proj_blocks):
            out[slot] = proj(feats)
        return out


def init_effnet_backbone(model: ControlNet, imagenet_features: Mapping[str, torch.Tensor]) -> None:
    """Start an ``effnet`` ControlNet's backbone from ImageNet EfficientNetV2-S ``features`` weights (official rule).

    ``imagenet_features``: the state dict of ``efficientnet_v2_s(weights=...).features`` (keys ``0.0.weight``...).
    For ``c_in > 3`` the first conv is zero with the RGB weights copied into input channels 0..2; for
    ``c_in < 3`` it takes the first ``c_in`` RGB channels.
    """
    if model.bottleneck_mode != "effnet":
        raise ValueError("init_effnet_backbone needs a ControlNet with bottleneck_mode='effnet'")
    state = dict(imagenet_features)
    rgb = state.pop("0.0.weight")  # (24, 3, 3, 3)
    first = torch.zeros(24, model.c_in, 3, 3, dtype=rgb.dtype)
    n = min(3, model.c_in)
    first[:, :n] = rgb[:, :n]
    state["0.0.weight"] = first
    model.backbone.load_state_dict(state, strict=True)


def resblock_call_channels(stage_c: nn.Module) -> list[int]:
    """The channel count at every ResBlock call of a Stage C / LevelUNet, in the order ``cnet=`` is consumed.

    Down path then up path, each level's ResBlocks ``len(repeat_mappers) + 1`` times (works on meta modules).
    """
    def walk(levels, mappers) -> list[int]:
        out = []
        for level, repmap in zip(levels, mappers):
            per_pass = [_inner_resblock(b).depthwise.out_channels for b in level if _inner_resblock(b) is not None]
            out += per_pass * (len(repmap) + 1)
        return out

    return walk(stage_c.down_blocks, stage_c.down_repeat_mappers) + walk(stage_c.up_blocks, stage_c.up_repeat_mappers)


def _inner_resblock(block: nn.Module) -> ResBlock | None:
    for attr in ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "module"):
        while isinstance(getattr(block, attr, None), nn.Module):
            block = getattr(block, attr)
    return block if isinstance(block, ResBlock) else None


def scaled_proj_blocks(resblock_calls: int) -> list[int]:
    """The official ``controlnet_blocks`` positions scaled to a Stage C with ``resblock_calls`` calls.

    ``floor(p * calls / 64)`` for the official p in [0,4,8,12,51,55,59,63]: unchanged for the 3.6B Stage C
    (64 calls); [0,2,4,6,25,27,29,31] for lite (32 calls); duplicates (very small models) are dropped.
    """
    if resblock_calls < 1:
        raise ValueError(f"resblock_calls must be >= 1, got {resblock_calls}")
    return sorted({p * resblock_calls // OFFICIAL_RESBLOCK_CALLS for p in OFFICIAL_PROJ_BLOCKS})
