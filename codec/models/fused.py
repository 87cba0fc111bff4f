"""Fused inference paths of the trunk blocks: the same function, fewer passes over memory.

Used by :class:`~cascadekit.codec.models.blocks.ResBlock` and
:class:`~cascadekit.codec.models.blocks.AttnBlock` only when :func:`fused_ok` holds (no autograd
recording, eval mode, weights on the input's device); training and sequential offload (which moves
each submodule's weights in a forward pre-hook) keep the module-by-module path. Values equal that
path up to float rounding (relative ~5e-7 in float32); every golden case passes at its default
tolerance.

* ResBlock: the expanded hidden ``h`` (B, 4c, N) is computed channels-first, so GlobalResponseNorm's
  spatial L2 norm is a contiguous inner reduction (no ``x*x`` temporary); GELU runs in place; the GRN
  scale and shift are folded into the second Linear (``(h*s + beta) @ W^T = h @ (W*s)^T + W @ beta``)
  and its output is accumulated onto the residual by ``baddbmm`` (no separate add pass).
* Attention: key and value come out of one batched matmul already head-major and contiguous
  (B, 2h, M, d), which the CPU flash kernel reads faster than the strided views of a packed Linear
  output (bit-identical values); the output projection accumulates onto the residual.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fused_ok(block: nn.Module, x: torch.Tensor) -> bool:
    """True when ``block`` may take its fused path on ``x``: grad disabled, eval mode (dropout is the
    identity), no autocast, and every parameter already on ``x``'s device in ``x``'s dtype. The fused
    path reads the weights of the block's Linear / GRN / attention submodules without calling them,
    so forward hooks on those submodules do not run there (hooks on the block itself do); sequential
    offload, which moves each submodule in a pre-hook, leaves the weights elsewhere and so gets the
    module-by-module path."""
    # meta tensors (shape/FLOP counting) have no autocast state to ask: they take the module path
    if x.device.type == "meta" or torch.is_grad_enabled() or block.training \
            or torch.is_autocast_enabled(x.device.type):
        return False
    return all(p.device == x.device and p.dtype == x.dtype for p in block.parameters())


def tokens_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) (a view when x is channels-last in memory, as inside the trunk)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def tokens_to_image(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) view (channels-last memory)."""
    return t.unflatten(1, (h, w)).permute(0, 3, 1, 2)


def res_block_mlp(t: torch.Tensor, x_res: torch.Tensor, lin1: nn.Linear, grn: nn.Module,
                  lin2: nn.Linear) -> torch.Tensor:
    """``x_res + lin2(grn(gelu(lin1(t))))`` for t (B, N, c_in), x_res (B, N, c) -> (B, N, c).

    The hidden is (B, 4c, N) channels-first; GRN's ``x*(gamma*Nx + 1) + beta`` becomes the per-sample
    weight ``lin2.weight * (gamma*Nx + 1)`` and the bias ``lin2.bias + lin2.weight @ beta``.
    """
    b = t.shape[0]
    h = torch.baddbmm(lin1.bias.view(1, -1, 1), lin1.weight.expand(b, -1, -1), t.mT)  # (B, 4c, N)
    torch.ops.aten.gelu_(h)
    gx = torch.linalg.vector_norm(h, dim=-1)  # (B, 4c)
    s = (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)).mul_(grn.gamma.view(1, -1)).add_(1)  # (B, 4c)
    w2 = lin2.weight[None] * s[:, None, :]  # (B, c, 4c)
    bias = torch.addmv(lin2.bias, lin2.weight, grn.beta.view(-1))  # (c,)
    return torch.add(x_res, bias).baddbmm_(h.mT, w2.mT)


def kv_heads(kv_in: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, nhead: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value (B, h, M, d) each, contiguous, from kv_in (B, M, c) and the packed (2c, c) / (2c,) rows."""
    b, m, c = kv_in.shape
    d = c // nhead
    w = weight.view(2 * nhead, d, c).transpose(1, 2)  # (2h, c, d)
    bias = bias.view(2 * nhead, 1, d)
    kv = kv_in.new_empty(b, 2 * nhead, m, d)
    for i in range(b):  # one batched matmul per sample (the weight differs per head, not per sample)
        torch.baddbmm(bias, kv_in[i].expand(2 * nhead, m, c), w, out=kv[i])
    return kv[:, :nhead], kv[:, nhead:]


def attention_heads(q_in: torch.Tensor, kv_in: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    nhead: int) -> torch.Tensor:
    """Multi-head attention before the output projection: q_in (B, Nq, c), kv_in (B, M, c) -> (B, Nq, c)."""
    b, nq, c = q_in.shape
    q = F.linear(q_in, weight[:c], bias[:c]).view(b, nq, nhead, c // nhead).transpose(1, 2)  # (B, h, Nq, d)
    k, v = kv_heads(kv_in, weight[c:], bias[c:], nhead)
    o = F.scaled_dot_product_attention(q, k, v)  # (B, h, Nq, d)
    return o.transpose(1, 2).reshape(b, nq, c)


def linear_onto(x_res: torch.Tensor, o: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    """``x_res + lin(o)`` for x_res (B, N, c_out), o (B, N, c_in) in one accumulation -> (B, N, c_out)."""
    b, n, _ = o.shape
    out = torch.add(x_res, lin.bias)
    out.view(b * n, -1).addmm_(o.reshape(b * n, -1), lin.weight.t())
    return out
