"""Stage B: the diffusion decoder from the 16-channel semantic latent to Stage A latents.

``StageB(x, r, effnet, clip)``: x (B, 4, H, W) noised Stage A latents (H = W = 256 for 1024² images),
r (B,) noise condition in [0, 1], effnet (B, 16, h, w) semantic latents (24×24 for 1024²), clip
(B, 1, c_clip) pooled CLIP text embedding -> (B, 4, H, W) prediction. Official layout and numerics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from cascadekit.codec.models.blocks import LayerNorm2d, interpolate_fp32
from cascadekit.codec.models.fused import conv_mlp, fused_weights
from cascadekit.codec.models.config import ModelConfig
from cascadekit.codec.models.presets import infer_preset_of
from cascadekit.codec.models.unet import LevelUNet


@dataclass
class StageBConfig(ModelConfig):
    """The official ``StageB`` constructor arguments. Presets: ``big`` (1.56B), ``lite`` (700M), ``tiny``."""

    c_in: int = 4
    c_out: int = 4
    c_r: int = 64
    patch_size: int = 2
    c_cond: int = 1280
    c_hidden: list = field(default_factory=lambda: [320, 640, 1280, 1280])
    nhead: list = field(default_factory=lambda: [-1, -1, 20, 20])
    blocks: list = field(default_factory=lambda: [[2, 6, 28, 6], [6, 28, 6, 2]])
    block_repeat: list = field(default_factory=lambda: [[1, 1, 1, 1], [3, 3, 2, 2]])
    level_config: list = field(default_factory=lambda: ["CT", "CT", "CTA", "CTA"])
    c_clip: int = 1280
    c_clip_seq: int = 4
    c_effnet: int = 16
    c_pixels: int = 3
    kernel_size: int = 3
    dropout: list = field(default_factory=lambda: [0, 0, 0.1, 0.1])
    self_attn: bool = True
    t_conds: list = field(default_factory=lambda: ["sca"])

    PRESETS = {
        "big": {},  # stage_b.safetensors / stage_b_bf16.safetensors ("3B" label, 1.56B params)
        "lite": dict(  # stage_b_lite*.safetensors (700M)
            c_hidden=[320, 576, 1152, 1152],
            nhead=[-1, 9, 18, 18],
            blocks=[[2, 4, 14, 4], [4, 14, 4, 2]],
            block_repeat=[[1, 1, 1, 1], [2, 2, 2, 2]],
        ),
        "tiny": dict(  # random test model: every structural feature, fast on CPU
            patch_size=4,
            c_cond=64,
            c_hidden=[16, 32, 64, 64],
            nhead=[-1, -1, 4, 4],
            blocks=[[1, 1, 1, 1], [1, 1, 1, 1]],
            block_repeat=[[1, 1, 1, 1], [2, 2, 1, 1]],
            c_clip=32,
        ),
    }


class StageB(LevelUNet):
    """Official Stable Cascade Stage B (key names and order equal the released checkpoints)."""

    def __init__(self, c_in=4, c_out=4, c_r=64, patch_size=2, c_cond=1280, c_hidden=(320, 640, 1280, 1280),
                 nhead=(-1, -1, 20, 20), blocks=((2, 6, 28, 6), (6, 28, 6, 2)),
                 block_repeat=((1, 1, 1, 1), (3, 3, 2, 2)), level_config=("CT", "CT", "CTA", "CTA"), c_clip=1280,
                 c_clip_seq=4, c_effnet=16, c_pixels=3, kernel_size=3, dropout=(0, 0, 0.1, 0.1), self_attn=True,
                 t_conds=("sca",)):
        super().__init__()
        self.c_r = c_r
        self.t_conds = list(t_conds)
        self.c_clip_seq = c_clip_seq
        self.c_pixels = c_pixels
        self.gradient_checkpointing = False

        # conditioning
        self.effnet_mapper = nn.Sequential(
            nn.Conv2d(c_effnet, c_hidden[0] * 4, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(c_hidden[0] * 4, c_hidden[0], kernel_size=1),
            LayerNorm2d(c_hidden[0], eps=1e-6),
        )
        self.pixels_mapper = nn.Sequential(
            nn.Conv2d(c_pixels, c_hidden[0] * 4, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(c_hidden[0] * 4, c_hidden[0], kernel_size=1),
            LayerNorm2d(c_hidden[0], eps=1e-6),
        )
        self.clip_mapper = nn.Linear(c_clip, c_cond * c_clip_seq)
        self.clip_norm = nn.LayerNorm(c_cond, elementwise_affine=False, eps=1e-6)
        self.embedding = self._patch_embedding(c_in, c_hidden[0], patch_size)

        self._build_levels(
            c_hidden=c_hidden, nhead=nhead, blocks=blocks, block_repeat=block_repeat, level_config=level_config,
            c_cond=c_cond, c_r=c_r, t_conds=self.t_conds, kernel_size=kernel_size, dropout=dropout,
            self_attn=self_attn,
            downscaler=lambda t, ci, co: nn.Sequential(LayerNorm2d(ci, eps=1e-6), nn.Conv2d(ci, co, kernel_size=2, stride=2)),
            upscaler=lambda t, ci, co: nn.Sequential(
                LayerNorm2d(ci, eps=1e-6), nn.ConvTranspose2d(ci, co, kernel_size=2, stride=2)
            ),
        )

        self.clf = self._patch_classifier(c_hidden[0], c_out, patch_size)
        self._init_official(self._conditioning_mappers())

    def _conditioning_mappers(self) -> list[nn.Module]:
        return [self.clip_mapper, self.effnet_mapper[0], self.effnet_mapper[2], self.pixels_mapper[0],
                self.pixels_mapper[2]]

    @staticmethod
    def _map(mapper: nn.Sequential, z: torch.Tensor) -> torch.Tensor:
        """A conditioning mapper on z (B, C, h, w) -> (B, c_hidden[0], h, w); inference takes the GEMM path."""
        conv1, _, conv2, norm = mapper
        weights = fused_weights(mapper, z, lambda: (conv1.weight, conv1.bias, conv2.weight, conv2.bias))
        return mapper(z) if weights is None else conv_mlp(z, weights, norm)

    def gen_c_embeddings(self, clip: torch.Tensor) -> torch.Tensor:
        """Pooled CLIP (B, c_clip) or (B, S, c_clip) -> normalised tokens (B, S*c_clip_seq, c_cond)."""
        if clip.dim() == 2:
            clip = clip.unsqueeze(1)
        clip = self.clip_mapper(clip).view(clip.size(0), clip.size(1) * self.c_clip_seq, -1)
        return self.clip_norm(clip)

    def forward(self, x: torch.Tensor, r: torch.Tensor, effnet: torch.Tensor, clip: torch.Tensor,
                pixels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """x (B,c_in,H,W), r (B,), effnet (B,c_effnet,h,w), clip (B,1,c_clip) [, pixels (B,3,h',w'), sca=(B,)].

        Returns (B, c_out, H, W) in the model's dtype. H and W must be multiples of
        patch_size * 2**(levels-1). Inputs are cast to the model's dtype; interpolations run in float32.
        """
        self._check_inputs(x, r)
        dtype = self._working_dtype()
        if pixels is None:
            pixels = x.new_zeros(x.size(0), self.c_pixels, 8, 8)
        r_embed = self._r_embed(r, kwargs, dtype)  # (B, c_r*(1+len(t_conds)))
        clip = self.gen_c_embeddings(clip.to(dtype))  # (B, S, c_cond)

        x = self.embedding(x.to(dtype))  # (B, c_hidden[0], H/p, W/p)
        x = x + self._map(self.effnet_mapper, interpolate_fp32(effnet.float(), size=x.shape[-2:]).to(dtype))
        x = x + interpolate_fp32(self._map(self.pixels_mapper, pixels.to(dtype)), size=x.shape[-2:])
        level_outputs = self._down_encode(x, r_embed, clip)
        x = self._up_decode(level_outputs, r_embed, clip)
        return self.clf(x)


def infer_preset(state_dict: Mapping[str, torch.Tensor]) -> StageBConfig:
    """Recognise an official-layout Stage B state dict as the ``big``, ``lite`` or ``tiny`` preset.

    Compares every key and shape with each preset built on the meta device; raises
    :class:`WeightsError` when none fits exactly.
    """
    return infer_preset_of(StageB, StageBConfig, state_dict, "Stage B")
