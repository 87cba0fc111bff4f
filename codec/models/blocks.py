"""Building blocks shared by Stage B and Stage C (official Stable Cascade layout and numerics).

Every block keeps the official parameter names, so official checkpoints load unchanged:

* :class:`ResBlock`        ``depthwise``, ``norm``, ``channelwise.{0,2,4}`` (GRN gamma/beta in ``.2``)
* :class:`AttnBlock`       ``norm``, ``attention.attn.{in_proj_weight,in_proj_bias,out_proj.*}``, ``kv_mapper.1``
* :class:`TimestepBlock`   ``mapper``, ``mapper_<tcond>``
* :class:`UpDownBlock2d`   ``blocks.{0,1}`` (1x1 conv and an optional bilinear resampler)

Attention is computed with :func:`torch.nn.functional.scaled_dot_product_attention` on the packed
``nn.MultiheadAttention`` parameter layout (query rows ``0..C-1``, key rows ``C..2C-1``, value rows
``2C..3C-1``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cascadekit.codec.models.fused import (
    attention_heads, fused_weights, linear_onto, res_block_mlp, tokens_last, tokens_to_image,
)


def r_embedding(r: torch.Tensor, c_r: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of the noise condition ``r`` (B,) -> (B, c_r), float32.

    Reproduces the official ``gen_r_embedding`` float32 expression exactly: ``r * max_positions``
    first, then times ``exp(-arange(half) * ln(max_positions) / (half - 1))``, then ``[sin, cos]``,
    zero-padded by one column when ``c_r`` is odd. The arguments reach ~1e4 rad, so any re-ordering
    of this arithmetic (e.g. ``r * (max_positions * freq)``) moves entries by up to ~1e-3.
    """
    if r.dim() != 1:
        raise ValueError(f"r must have shape (B,), got {tuple(r.shape)}")
    r = r.float() * max_positions
    half = c_r // 2
    step = math.log(max_positions) / (half - 1)
    freqs = torch.arange(half, device=r.device).float().mul(-step).exp()  # (half,)
    emb = r[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([emb.sin(), emb.cos()], dim=1)  # (B, 2*half)
    if c_r % 2 == 1:
        emb = F.pad(emb, (0, 1), mode="constant")
    return emb


def interpolate_fp32(x: torch.Tensor, **kwargs) -> torch.Tensor:
    """Bilinear ``F.interpolate`` evaluated in float32 (the official ``.float()`` up-cast), cast back to x's dtype."""
    return F.interpolate(x.float(), mode="bilinear", align_corners=True, **kwargs).to(x.dtype)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor, no affine parameters (official eps 1e-6)."""

    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.c = c
        self.eps = eps

    def channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a (B, H, W, C) tensor over its last axis."""
        return F.layer_norm(x, (self.c,), eps=self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,C,H,W) -> (B,C,H,W)
        return self.channels_last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.c}, eps={self.eps}"


def _spatial_l2(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over axes 1 and 2 of (B, H, W, C) -> (B, 1, 1, C), see :class:`GlobalResponseNorm`."""
    if x.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad):
        return x.square().sum(dim=(1, 2), keepdim=True).sqrt()
    # torch.norm under autograd: sqrt's gradient at an all-zero channel is inf * 0 = NaN, torch.norm's is 0
    return torch.norm(x, p=2, dim=(1, 2), keepdim=True)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2 GRN on channels-last input (B, H, W, C): ``gamma*(x*Nx) + beta + x``.

    Evaluated as ``x * (gamma*Nx + 1) + beta`` in one fused pass over x (same value up to float rounding).
    The spatial L2 norm of a float32 input is ``sqrt(sum(x*x))``: the same value as ``torch.norm`` up to
    float rounding (relative ~1e-7) and ~10x faster on CPU, where ``linalg_vector_norm`` over the two
    outer axes of a channels-last tensor runs a strided reduction. Other dtypes keep ``torch.norm``
    (it accumulates half-precision squares in float32, so fp16 cannot overflow there).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = _spatial_l2(x)  # (B,1,1,C)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)  # (B,1,1,C)
        return torch.addcmul(self.beta, x, self.gamma * nx + 1)


class ResBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> [concat skip] -> Linear/GELU/GRN/Dropout/Linear, residual.

    x: (B, c, H, W); x_skip: (B, c_skip, H, W) or None. Returns (B, c, H, W).
    """

    def __init__(self, c: int, c_skip: int = 0, kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        self.depthwise = nn.Conv2d(c, c, kernel_size=kernel_size, padding=kernel_size // 2, groups=c)
        self.norm = LayerNorm2d(c, eps=1e-6)
        self.channelwise = nn.Sequential(
            nn.Linear(c + c_skip, c * 4),
            nn.GELU(),
            GlobalResponseNorm(c * 4),
            nn.Dropout(dropout),
            nn.Linear(c * 4, c),
        )

    def forward(self, x: torch.Tensor, x_skip: torch.Tensor | None = None) -> torch.Tensor:
        x_res = x
        x = self.norm.channels_last(self.depthwise(x).permute(0, 2, 3, 1))  # (B,H,W,c)
        if x_skip is not None:
            x = torch.cat([x, x_skip.permute(0, 2, 3, 1)], dim=-1)  # (B,H,W,c+c_skip)
        weights = fused_weights(self, x_res, self._mlp_weights)
        if weights is not None:  # inference: same values, fewer passes (see codec.models.fused)
            b, _, h, w = x_res.shape
            return tokens_to_image(res_block_mlp(x.reshape(b, h * w, -1), tokens_last(x_res), weights), h, w)
        x = self.channelwise(x).permute(0, 3, 1, 2)  # (B,c,H,W)
        return x + x_res

    def _mlp_weights(self) -> tuple[torch.Tensor, ...]:
        lin1, _, grn, _, lin2 = self.channelwise
        return lin1.weight, lin1.bias, grn.gamma, grn.beta, lin2.weight, lin2.bias


class PackedAttention(nn.Module):
    """The parameters of ``nn.MultiheadAttention(c, nhead, bias=True)`` evaluated with SDPA.

    ``in_proj_weight`` (3c, c) / ``in_proj_bias`` (3c) pack query, key and value rows; ``out_proj``
    is a Linear(c, c). Dropout on the attention weights applies only in training mode.
    """

    def __init__(self, c: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        if c % nhead != 0:
            raise ValueError(f"attention width {c} is not divisible by nhead={nhead}")
        self.c, self.nhead, self.dropout = c, nhead, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * c, c))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * c))
        self.out_proj = nn.Linear(c, c)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # nn.MultiheadAttention's initialisation
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor) -> torch.Tensor:
        """q_in: (B, Nq, c), kv_in: (B, Nkv, c) -> (B, Nq, c)."""
        c, h = self.c, self.nhead
        b, nq, _ = q_in.shape
        nkv = kv_in.shape[1]
        w, bias = self.in_proj_weight, self.in_proj_bias
        q = F.linear(q_in, w[:c], bias[:c])  # (B,Nq,c)
        k, v = F.linear(kv_in, w[c:], bias[c:]).chunk(2, dim=-1)  # (B,Nkv,c) each
        q = q.view(b, nq, h, c // h).transpose(1, 2)  # (B,h,Nq,d)
        k = k.reshape(b, nkv, h, c // h).transpose(1, 2)
        v = v.reshape(b, nkv, h, c // h).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B,h,Nq,d)
        o = o.transpose(1, 2).reshape(b, nq, c)
        return self.out_proj(o)


class Attention2D(nn.Module):
    """Holds ``attn`` (official name); attends image tokens to [image tokens; condition tokens]."""

    def __init__(self, c: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.attn = PackedAttention(c, nhead, dropout)

    def forward(self, tokens: torch.Tensor, kv: torch.Tensor, self_attn: bool = False) -> torch.Tensor:
        """tokens: (B, N, c) normalised image tokens; kv: (B, S, c) mapped conditioning -> (B, N, c)."""
        if self_attn:
            kv = torch.cat([tokens, kv], dim=1)  # (B, N+S, c)
        return self.attn(tokens, kv)


class AttnBlock(nn.Module):
    """x + Attention(LayerNorm(x), SiLU->Linear(cond)). x: (B,c,H,W), kv: (B,S,c_cond)."""

    def __init__(self, c: int, c_cond: int, nhead: int, self_attn: bool = True, dropout: float = 0.0):
        super().__init__()
        self.self_attn = self_attn
        self.norm = LayerNorm2d(c, eps=1e-6)
        self.attention = Attention2D(c, nhead, dropout)
        self.kv_mapper = nn.Sequential(nn.SiLU(), nn.Linear(c_cond, c))

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        kv = self.kv_mapper(kv)  # (B,S,c)
        tokens = self.norm.channels_last(x.permute(0, 2, 3, 1)).reshape(b, h * w, c)  # (B,HW,c)
        attn = self.attention.attn
        weights = fused_weights(self, x, self._attention_weights)
        if weights is not None:  # inference: same values, fewer passes (see codec.models.fused)
            w_in, b_in, w_out, b_out = weights
            kv = torch.cat([tokens, kv], dim=1) if self.self_attn else kv  # (B, N+S, c)
            o = attention_heads(tokens, kv, w_in, b_in, attn.nhead)  # (B,HW,c)
            return tokens_to_image(linear_onto(tokens_last(x), o, w_out, b_out), h, w)
        out = self.attention(tokens, kv, self_attn=self.self_attn)  # (B,HW,c)
        return x + out.transpose(1, 2).unflatten(2, (h, w))

    def _attention_weights(self) -> tuple[torch.Tensor, ...]:
        attn = self.attention.attn
        return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias


class TimestepBlock(nn.Module):
    """FiLM by the r embedding: ``x * (1 + a) + b`` with (a, b) summed over ``mapper`` and ``mapper_<cond>``.

    t: (B, c_timestep * (1 + len(conds))), the concatenated embeddings of r and each t_cond.
    """

    def __init__(self, c: int, c_timestep: int, conds: Sequence[str] = ("sca",)):
        super().__init__()
        self.mapper = nn.Linear(c_timestep, c * 2)
        self.conds = list(conds)
        for name in self.conds:
            setattr(self, f"mapper_{name}", nn.Linear(c_timestep, c * 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.chunk(len(self.conds) + 1, dim=1)
        ab = self.mapper(t[0])  # (B, 2c): [a, b]; the mappers' sum, then split (same values as split, then summed)
        for i, name in enumerate(self.conds):
            ab = ab + getattr(self, f"mapper_{name}")(t[i + 1])
        a, b = ab.view(ab.shape[0], 2, -1, 1, 1).unbind(1)  # (B,c,1,1) each
        return torch.addcmul(b, x, 1 + a)  # x * (1 + a) + b in one pass


class Resample2d(nn.Module):
    """Bilinear resampling by a fixed factor (align_corners=True), evaluated in float32."""

    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return interpolate_fp32(x, scale_factor=self.scale_factor)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}"


class UpDownBlock2d(nn.Module):
    """Stage C level transition: 1x1 conv plus (when ``enabled``) bilinear x2 / x0.5 resampling.

    ``blocks`` = [resample, conv] for ``mode='up'`` and [conv, resample] for ``mode='down'``; a
    disabled resampler is an Identity (official ``switch_level=[False]``).
    """

    def __init__(self, c_in: int, c_out: int, mode: str, enabled: bool = True):
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"mode must be 'up' or 'down', got {mode!r}")
        resample = Resample2d(2.0 if mode == "up" else 0.5) if enabled else nn.Identity()
        mapping = nn.Conv2d(c_in, c_out, kernel_size=1)
        self.blocks = nn.ModuleList([resample, mapping] if mode == "up" else [mapping, resample])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x
