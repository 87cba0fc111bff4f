"""The level trunk Stage B and Stage C share: down levels, up levels with skips, repeat mappers.

Both official networks build exactly the same down/up structure (only the level transitions
differ), so it lives here once. Subclasses create their conditioning modules first, then call
:meth:`LevelUNet._build_levels` so that ``state_dict()`` keeps the official key order
(``down_blocks``, ``down_downscalers``, ``down_repeat_mappers``, ``up_blocks``, ``up_upscalers``,
``up_repeat_mappers``).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cascadekit.codec.errors import InputError
from cascadekit.codec.models.blocks import (
    AttnBlock,
    LayerNorm2d,
    ResBlock,
    TimestepBlock,
    interpolate_fp32,
    r_embedding,
)


def _inner(block: nn.Module) -> nn.Module:
    """The block inside FSDP / activation-checkpoint wrappers (the trunk dispatches on block type)."""
    for attr in ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "module"):
        while hasattr(block, attr) and isinstance(getattr(block, attr), nn.Module):
            block = getattr(block, attr)
    return block


def _as_list(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


class LevelUNet(nn.Module):
    """Base class: level construction, the down/up passes, r embedding and gradient checkpointing.

    Set ``model.gradient_checkpointing = True`` to recompute every block in the backward pass
    (only in training mode with grad enabled; ``use_reentrant=False``, RNG state preserved).
    """

    gradient_checkpointing: bool = False

    def _build_levels(
        self,
        *,
        c_hidden: Sequence[int],
        nhead: Sequence[int],
        blocks: Sequence[Sequence[int]],
        block_repeat: Sequence[Sequence[int]] | None,
        level_config: Sequence[str],
        c_cond: int,
        c_r: int,
        t_conds: Sequence[str],
        kernel_size: int,
        dropout,
        self_attn,
        downscaler: Callable[[int, int, int], nn.Module],
        upscaler: Callable[[int, int, int], nn.Module],
    ) -> None:
        """Create the level modules. ``downscaler(t, c_in, c_out)`` / ``upscaler(t, c_in, c_out)`` build the
        transition ``t`` between level ``t`` and ``t + 1``."""
        n = len(c_hidden)
        for name, value in (("nhead", nhead), ("level_config", level_config)):
            if len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries but c_hidden has {n} levels")
        dropout = _as_list(dropout, n)
        self_attn = _as_list(self_attn, n)

        def make(kind: str, i: int, c_skip: int = 0) -> nn.Module:
            if kind == "C":
                return ResBlock(c_hidden[i], c_skip, kernel_size=kernel_size, dropout=dropout[i])
            if kind == "A":
                return AttnBlock(c_hidden[i], c_cond, nhead[i], self_attn=self_attn[i], dropout=dropout[i])
            if kind == "T":
                return TimestepBlock(c_hidden[i], c_r, conds=t_conds)
            raise ValueError(f"block type {kind!r} not supported (use 'C', 'T' or 'A')")

        self.down_blocks = nn.ModuleList()
        self.down_downscalers = nn.ModuleList()
        self.down_repeat_mappers = nn.ModuleList()
        for i in range(n):
            self.down_downscalers.append(downscaler(i - 1, c_hidden[i - 1], c_hidden[i]) if i > 0 else nn.Identity())
            self.down_blocks.append(nn.ModuleList(make(kind, i) for _ in range(blocks[0][i]) for kind in level_config[i]))
            if block_repeat is not None:
                self.down_repeat_mappers.append(
                    nn.ModuleList(nn.Conv2d(c_hidden[i], c_hidden[i], kernel_size=1) for _ in range(block_repeat[0][i] - 1))
                )

        self.up_blocks = nn.ModuleList()
        self.up_upscalers = nn.ModuleList()
        self.up_repeat_mappers = nn.ModuleList()
        for i in reversed(range(n)):
            self.up_upscalers.append(upscaler(i - 1, c_hidden[i], c_hidden[i - 1]) if i > 0 else nn.Identity())
            level = nn.ModuleList()
            for j in range(blocks[1][::-1][i]):
                for k, kind in enumerate(level_config[i]):
                    c_skip = c_hidden[i] if i < n - 1 and j == k == 0 else 0
                    level.append(make(kind, i, c_skip))
            self.up_blocks.append(level)
            if block_repeat is not None:
                self.up_repeat_mappers.append(
                    nn.ModuleList(
                        nn.Conv2d(c_hidden[i], c_hidden[i], kernel_size=1) for _ in range(block_repeat[1][::-1][i] - 1)
                    )
                )
        self._n_down_blocks = sum(blocks[0])

    @classmethod
    def from_config(cls, cfg) -> "LevelUNet":
        """Build from a config dataclass whose fields are the constructor's keyword arguments."""
        return cls(**cfg.kwargs())

    # --- the patch embedding in front of the trunk and the classifier behind it (official layout) ---
    @staticmethod
    def _patch_embedding(c_in: int, c_hidden: int, patch_size: int) -> nn.Sequential:
        """(B, c_in, H, W) -> (B, c_hidden, H/p, W/p): PixelUnshuffle, 1×1 conv, LayerNorm2d."""
        return nn.Sequential(
            nn.PixelUnshuffle(patch_size),
            nn.Conv2d(c_in * patch_size**2, c_hidden, kernel_size=1),
            LayerNorm2d(c_hidden, eps=1e-6),
        )

    @staticmethod
    def _patch_classifier(c_hidden: int, c_out: int, patch_size: int) -> nn.Sequential:
        """(B, c_hidden, H/p, W/p) -> (B, c_out, H, W): LayerNorm2d, 1×1 conv, PixelShuffle."""
        return nn.Sequential(
            LayerNorm2d(c_hidden, eps=1e-6),
            nn.Conv2d(c_hidden, c_out * patch_size**2, kernel_size=1),
            nn.PixelShuffle(patch_size),
        )

    # --- initialisation (official scheme; a no-op on the meta device) ---
    def _init_official(self, mappers: Sequence[nn.Module]) -> None:
        """Xavier everywhere, N(0, 0.02) for the conditioning ``mappers``, a small embedding, a zero classifier."""
        self.apply(self._init_weights)
        for m in mappers:
            nn.init.normal_(m.weight, std=0.02)
        nn.init.xavier_uniform_(self.embedding[1].weight, 0.02)
        nn.init.constant_(self.clf[1].weight, 0)
        self._init_trunk()

    def _init_trunk(self) -> None:
        for level in list(self.down_blocks) + list(self.up_blocks):
            for block in level:
                if isinstance(block, ResBlock):
                    block.channelwise[-1].weight.data *= np.sqrt(1 / self._n_down_blocks)
                elif isinstance(block, TimestepBlock):
                    for layer in block.modules():
                        if isinstance(layer, nn.Linear):
                            nn.init.constant_(layer.weight, 0)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    # --- conditioning ---
    def gen_r_embedding(self, r: torch.Tensor, max_positions: int = 10000) -> torch.Tensor:
        """(B,) noise condition -> (B, c_r) float32 sinusoidal embedding (official expression)."""
        return r_embedding(r, self.c_r, max_positions)

    def _r_embed(self, r: torch.Tensor, t_cond_values: dict, dtype: torch.dtype) -> torch.Tensor:
        """Embeddings of r and each t_cond (zeros when absent), concatenated: (B, c_r*(1+len(t_conds)))."""
        embs = [self.gen_r_embedding(r)]
        for name in self.t_conds:
            value = t_cond_values.get(name)
            embs.append(self.gen_r_embedding(torch.zeros_like(r) if value is None else value))
        return torch.cat(embs, dim=1).to(dtype)

    def _check_inputs(self, x: torch.Tensor, r: torch.Tensor) -> None:
        """Raise InputError for inputs the network cannot take (wrong rank/channels, size not a patch multiple)."""
        conv = self.embedding[1]
        p = self.embedding[0].downscale_factor
        c_in = conv.in_channels // (p * p)
        name = type(self).__name__
        if x.dim() != 4 or x.shape[1] != c_in:
            raise InputError(f"{name}: x must have shape (B, {c_in}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % p or x.shape[-1] % p:
            raise InputError(f"{name}: x height/width {tuple(x.shape[-2:])} must be multiples of patch_size={p}")
        if r.dim() != 1 or r.shape[0] != x.shape[0]:
            raise InputError(f"{name}: r must have shape ({x.shape[0]},) (one noise level per sample), got {tuple(r.shape)}")

    def _working_dtype(self) -> torch.dtype:
        return self.embedding[1].weight.dtype

    # --- the trunk ---
    def _call(self, block: nn.Module, *args) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _apply_block(self, block: nn.Module, x, r_embed, clip, skip=None) -> torch.Tensor:
        inner = _inner(block)
        if isinstance(inner, ResBlock):
            return self._call(block, x, skip) if skip is not None else self._call(block, x)
        if isinstance(inner, AttnBlock):
            return self._call(block, x, clip)
        if isinstance(inner, TimestepBlock):
            return self._call(block, x, r_embed)
        return self._call(block, x)

    def _down_encode(self, x, r_embed, clip, cnet: Iterator | None = None) -> list[torch.Tensor]:
        level_outputs = []
        for level, downscaler, repmap in zip(self.down_blocks, self.down_downscalers, self.down_repeat_mappers):
            x = downscaler(x)
            for rep in range(len(repmap) + 1):
                for block in level:
                    if cnet is not None and isinstance(_inner(block), ResBlock):
                        x = self._add_cnet(x, cnet)
                    x = self._apply_block(block, x, r_embed, clip)
                if rep < len(repmap):
                    x = repmap[rep](x)
            level_outputs.insert(0, x)
        return level_outputs

    def _up_decode(self, level_outputs, r_embed, clip, cnet: Iterator | None = None) -> torch.Tensor:
        x = level_outputs[0]
        for i, (level, upscaler, repmap) in enumerate(zip(self.up_blocks, self.up_upscalers, self.up_repeat_mappers)):
            for rep in range(len(repmap) + 1):
                for k, block in enumerate(level):
                    skip = None
                    if isinstance(_inner(block), ResBlock):
                        skip = level_outputs[i] if k == 0 and i > 0 else None
                        if skip is not None and x.shape[-2:] != skip.shape[-2:]:
                            x = interpolate_fp32(x, size=skip.shape[-2:])
                        if cnet is not None:
                            x = self._add_cnet(x, cnet)
                    x = self._apply_block(block, x, r_embed, clip, skip)
                if rep < len(repmap):
                    x = repmap[rep](x)
            x = upscaler(x)
        return x

    @staticmethod
    def _add_cnet(x: torch.Tensor, cnet: Iterator) -> torch.Tensor:
        nxt = next(cnet, None)
        if nxt is None:
            return x
        return x + interpolate_fp32(nxt.to(x.dtype), size=x.shape[-2:])
