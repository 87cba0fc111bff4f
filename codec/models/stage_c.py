"""Stage C: the text-conditional diffusion prior in the 16×24×24 semantic latent space.

``StageC(x, r, clip_text, clip_text_pooled, clip_img)``: x (B, 16, 24, 24) noised semantic latents,
r (B,) noise condition in [0, 1], clip_text (B, 77, c_clip_text) CLIP last hidden states,
clip_text_pooled (B, 1, c_clip_text_pooled), clip_img (B, 1, c_clip_img) -> (B, 16, 24, 24).
Built from the shared blocks in :mod:`cascadekit.codec.models.blocks`; official layout and numerics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from cascadekit.codec.models.blocks import LayerNorm2d, UpDownBlock2d
from cascadekit.codec.models.config import ModelConfig
from cascadekit.codec.models.presets import infer_preset_of
from cascadekit.codec.models.unet import LevelUNet


@dataclass
class StageCConfig(ModelConfig):
    """The official ``StageC`` constructor arguments. Presets: ``big`` (3.6B), ``lite`` (1B), ``tiny``."""

    c_in: int = 16
    c_out: int = 16
    c_r: int = 64
    patch_size: int = 1
    c_cond: int = 2048
    c_hidden: list = field(default_factory=lambda: [2048, 2048])
    nhead: list = field(default_factory=lambda: [32, 32])
    blocks: list = field(default_factory=lambda: [[8, 24], [24, 8]])
    block_repeat: list = field(default_factory=lambda: [[1, 1], [1, 1]])
    level_config: list = field(default_factory=lambda: ["CTA", "CTA"])
    c_clip_text: int = 1280
    c_clip_text_pooled: int = 1280
    c_clip_img: int = 768
    c_clip_seq: int = 4
    kernel_size: int = 3
    dropout: list = field(default_factory=lambda: [0.1, 0.1])
    self_attn: bool = True
    t_conds: list = field(default_factory=lambda: ["sca", "crp"])
    switch_level: list = field(default_factory=lambda: [False])

    PRESETS = {
        "big": {},  # stage_c.safetensors / stage_c_bf16.safetensors (3.6B)
        "lite": dict(c_cond=1536, c_hidden=[1536, 1536], nhead=[24, 24], blocks=[[4, 12], [12, 4]]),  # 1B
        "tiny": dict(  # random test model: both attention levels, an up repeat mapper, sca/crp
            c_cond=64,
            c_hidden=[32, 64],
            nhead=[2, 4],
            blocks=[[1, 2], [2, 1]],
            block_repeat=[[1, 1], [2, 1]],
            c_clip_text=32,
            c_clip_text_pooled=32,
            c_clip_img=24,
        ),
    }


class StageC(LevelUNet):
    """Official Stable Cascade Stage C (key names and order equal the released checkpoints)."""

    def __init__(self, c_in=16, c_out=16, c_r=64, patch_size=1, c_cond=2048, c_hidden=(2048, 2048), nhead=(32, 32),
                 blocks=((8, 24), (24, 8)), block_repeat=((1, 1), (1, 1)), level_config=("CTA", "CTA"),
                 c_clip_text=1280, c_clip_text_pooled=1280, c_clip_img=768, c_clip_seq=4, kernel_size=3,
                 dropout=(0.1, 0.1), self_attn=True, t_conds=("sca", "crp"), switch_level=(False,)):
        super().__init__()
        self.c_r = c_r
        self.t_conds = list(t_conds)
        self.c_clip_seq = c_clip_seq
        self.gradient_checkpointing = False
        if len(switch_level) < len(c_hidden) - 1:
            raise ValueError(f"switch_level needs {len(c_hidden) - 1} entries (one per level transition)")

        # conditioning
        self.clip_txt_mapper = nn.Linear(c_clip_text, c_cond)
        self.clip_txt_pooled_mapper = nn.Linear(c_clip_text_pooled, c_cond * c_clip_seq)
        self.clip_img_mapper = nn.Linear(c_clip_img, c_cond * c_clip_seq)
        self.clip_norm = nn.LayerNorm(c_cond, elementwise_affine=False, eps=1e-6)
        self.embedding = self._patch_embedding(c_in, c_hidden[0], patch_size)

        # level transitions t -> t+1: LayerNorm2d + UpDownBlock2d (resampling only where switch_level[t])
        self._build_levels(
            c_hidden=c_hidden, nhead=nhead, blocks=blocks, block_repeat=block_repeat, level_config=level_config,
            c_cond=c_cond, c_r=c_r, t_conds=self.t_conds, kernel_size=kernel_size, dropout=dropout,
            self_attn=self_attn,
            downscaler=lambda t, ci, co: nn.Sequential(
                LayerNorm2d(ci, eps=1e-6), UpDownBlock2d(ci, co, mode="down", enabled=switch_level[t])
            ),
            upscaler=lambda t, ci, co: nn.Sequential(
                LayerNorm2d(ci, eps=1e-6), UpDownBlock2d(ci, co, mode="up", enabled=switch_level[t])
            ),
        )

        self.clf = self._patch_classifier(c_hidden[0], c_out, patch_size)
        self._init_official(self._conditioning_mappers())

    def _conditioning_mappers(self) -> list[nn.Module]:
        return [self.clip_txt_mapper, self.clip_txt_pooled_mapper, self.clip_img_mapper]

    def gen_c_embeddings(self, clip_txt: torch.Tensor, clip_txt_pooled: torch.Tensor,
                         clip_img: torch.Tensor) -> torch.Tensor:
        """(B,T,c_clip_text), (B,1,c_clip_text_pooled), (B,1,c_clip_img) -> (B, T+2*c_clip_seq, c_cond).

        2-D pooled / image inputs (B, C) are treated as one token each.
        """
        if clip_txt_pooled.dim() == 2:
            clip_txt_pooled = clip_txt_pooled.unsqueeze(1)
        if clip_img.dim() == 2:
            clip_img = clip_img.unsqueeze(1)
        txt = self.clip_txt_mapper(clip_txt)  # (B,T,c_cond)
        pooled = self.clip_txt_pooled_mapper(clip_txt_pooled).view(
            clip_txt_pooled.size(0), clip_txt_pooled.size(1) * self.c_clip_seq, -1
        )
        img = self.clip_img_mapper(clip_img).view(clip_img.size(0), clip_img.size(1) * self.c_clip_seq, -1)
        return self.clip_norm(torch.cat([txt, pooled, img], dim=1))

    def forward(self, x: torch.Tensor, r: torch.Tensor, clip_text: torch.Tensor, clip_text_pooled: torch.Tensor,
                clip_img: torch.Tensor, cnet: Sequence[torch.Tensor | None] | None = None, **kwargs) -> torch.Tensor:
        """x (B,c_in,H,W), r (B,), clip_text (B,T,c_clip_text), clip_text_pooled (B,1,·), clip_img (B,1,·).

        Optional ``sca=``/``crp=`` (B,) t_conds (zeros when absent) and ``cnet``: a list of ControlNet
        projections added, in order, before each ResBlock call (``None`` entries skip one).
        Returns (B, c_out, H, W) in the model's dtype.
        """
        self._check_inputs(x, r)
        dtype = self._working_dtype()
        r_embed = self._r_embed(r, kwargs, dtype)
        clip = self.gen_c_embeddings(clip_text.to(dtype), clip_text_pooled.to(dtype), clip_img.to(dtype))
        x = self.embedding(x.to(dtype))
        cnet_iter = iter(cnet) if cnet is not None else None
        level_outputs = self._down_encode(x, r_embed, clip, cnet_iter)
        x = self._up_decode(level_outputs, r_embed, clip, cnet_iter)
        return self.clf(x)


def infer_preset(state_dict: Mapping[str, torch.Tensor]) -> StageCConfig:
    """Recognise an official-layout Stage C state dict as ``big``, ``lite`` or ``tiny`` (else WeightsError)."""
    return infer_preset_of(StageC, StageCConfig, state_dict, "Stage C")
