"""Fused inference paths of the trunk blocks: the same function, fewer passes over memory.

Used by :class:`~cascadekit.codec.models.blocks.ResBlock` and
:class:`~cascadekit.codec.models.blocks.AttnBlock` (and Stage B's mappers) only when
:func:`fused_weights` hands them their weights (no autograd recording, eval mode, weights on the
input's device); training and sequential offload (which moves each submodule's weights in a forward
pre-hook) keep the module-by-module path. The kernels take tensors, not modules: each weight is read
once per call (a LoRA parametrization computes its weight on every read). Values equal that
path up to float rounding (relative ~5e-7 in float32); every golden case passes at its default
tolerance.

* ResBlock: the expanded hidden ``h`` (B, 4c, N) is computed channels-first, so GlobalResponseNorm's
  spatial L2 norm is a contiguous inner reduction (no ``x*x`` temporary); GELU runs in place; the GRN
  scale and shift are folded into the second Linear (``(h*s + beta) @ W^T = h @ (W*s)^T + W @ beta``)
  and its output is accumulated onto the residual by ``baddbmm`` (no separate add pass).
* Stage B's conditioning mappers (1x1 convs around a GELU): GEMMs over channels-last tokens.
* Attention: key and value are copied head-major and contiguous (B, 2h, M, d) after their GEMM,
  which the CPU flash kernel reads faster than the strided views of a packed Linear output
  (bit-identical values); the output projection accumulates onto the residual.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def fused_weights(block: nn.Module, x: torch.Tensor,
                  read: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...] | None:
    """The tensors ``read()`` returns, when ``block`` may take its fused path on ``x``; else None.

    Allowed: grad disabled, eval mode (dropout is the identity), no autocast, and every tensor that
    ``read`` returns (the weights the fused path uses without calling their module) already on ``x``'s
    device in ``x``'s dtype. ``read`` runs only after the mode checks pass, so training never
    evaluates a parametrized (LoRA) weight twice. Forward hooks on the submodules whose weights are
    read do not run on the fused path (hooks on the block itself do); sequential offload, which moves
    each submodule in a pre-hook, leaves those weights elsewhere and so gets the module-by-module path.
    The weights are read at each call, never cached (a cached list would go stale when parameters are
    replaced: ``load_state_dict(assign=True)``, LoRA injection); reading them costs ~2 µs, walking
    ``block.parameters()`` ~28 µs (about 1 % of a 2-thread Stage B forward).
    """
    # meta tensors (shape/FLOP counting) have no autocast state to ask: they take the module path
    if x.device.type == "meta" or torch.is_grad_enabled() or block.training \
            or torch.is_autocast_enabled(x.device.type):
        return None
    weights = read()
    device, dtype = x.device, x.dtype
    return weights if all(w.device == device and w.dtype == dtype for w in weights) else None


def tokens_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) (a view when x is channels-last in memory, as inside the trunk)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def tokens_to_image(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) view (channels-last memory)."""
    return t.unflatten(1, (h, w)).permute(0, 3, 1, 2)


def res_block_mlp(t: torch.Tensor, x_res: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``x_res + lin2(grn(gelu(lin1(t))))`` for t (B, N, c_in), x_res (B, N, c) -> (B, N, c).

    weights: (lin1.weight (4c, c_in), lin1.bias, grn.gamma, grn.beta (any shape of 4c elements),
    lin2.weight (c, 4c), lin2.bias). The hidden is (B, 4c, N) channels-first; GRN's
    ``x*(gamma*Nx + 1) + beta`` becomes the per-sample weight ``w2 * (gamma*Nx + 1)`` and the bias
    ``b2 + w2 @ beta``.
    """
    w1, b1, gamma, beta, w2, b2 = weights
    b = t.shape[0]
    h = torch.baddbmm(b1.view(1, -1, 1), w1.expand(b, -1, -1), t.mT)  # (B, 4c, N)
    torch.ops.aten.gelu_(h)
    gx = torch.linalg.vector_norm(h, dim=-1)  # (B, 4c)
    s = (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)).mul_(gamma.view(1, -1)).add_(1)  # (B, 4c)
    w2s = w2[None] * s[:, None, :]  # (B, c, 4c)
    bias = torch.addmv(b2, w2, beta.view(-1))  # (c,)
    return torch.add(x_res, bias).baddbmm_(h.mT, w2s.mT)


def conv_mlp(z: torch.Tensor, weights: tuple[torch.Tensor, ...], norm: nn.Module) -> torch.Tensor:
    """Stage B's conditioning mapper ``Conv1x1 -> GELU -> Conv1x1 -> LayerNorm2d`` as two GEMMs over tokens.

    z (B, C, H, W) in any memory layout -> (B, c, H, W) channels-last; weights: (w1, b1, w2, b2), the two
    convs' weights ((4c, C, 1, 1), (c, 4c, 1, 1)) and biases; norm: the LayerNorm2d. With 2+ threads
    oneDNN runs a 1x1 conv on a few input channels at a fraction of the GEMM rate (measured on the effnet
    mapper at 64x64: 16 -> 256 channels 1.96 ms as a conv, 0.52 ms as ``addmm``; the whole mapper
    5.7 -> 2.9 ms).
    """
    w1, b1, w2, b2 = weights
    b, c, h, w = z.shape
    t = z.permute(0, 2, 3, 1).reshape(b * h * w, c)  # a view for channels-last z, one copy otherwise
    hid = torch.addmm(b1, t, w1.flatten(1).t())  # (BHW, 4c)
    torch.ops.aten.gelu_(hid)
    out = torch.addmm(b2, hid, w2.flatten(1).t())  # (BHW, c_out)
    out = norm.channels_last(out)
    return out.view(b, h, w, -1).permute(0, 3, 1, 2)


def kv_heads(kv_in: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, nhead: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value (B, h, M, d) each, contiguous, from kv_in (B, M, c) and the packed (2c, c) / (2c,) rows.

    One GEMM over all tokens, then one copy to head-major: the flash kernel reads contiguous heads faster
    than the strided head views of the GEMM's output, and the copy costs less than the difference
    (measured: 13 % less time for this step than one batched matmul per sample writing heads directly).
    """
    b, m, c = kv_in.shape
    kv = F.linear(kv_in, weight, bias).view(b, m, 2 * nhead, c // nhead).transpose(1, 2).contiguous()
    return kv[:, :nhead], kv[:, nhead:]


def attention_heads(q_in: torch.Tensor, kv_in: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    nhead: int) -> torch.Tensor:
    """Multi-head attention before the output projection: q_in (B, Nq, c), kv_in (B, M, c) -> (B, Nq, c)."""
    b, nq, c = q_in.shape
    q = F.linear(q_in, weight[:c], bias[:c]).view(b, nq, nhead, c // nhead).transpose(1, 2)  # (B, h, Nq, d)
    k, v = kv_heads(kv_in, weight[c:], bias[c:], nhead)
    o = F.scaled_dot_product_attention(q, k, v)  # (B, h, Nq, d)
    return o.transpose(1, 2).reshape(b, nq, c)


def linear_onto(x_res: torch.Tensor, o: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x_res + F.linear(o, weight, bias)`` for x_res (B, N, c_out), o (B, N, c_in), weight (c_out, c_in),
    in one accumulation -> (B, N, c_out)."""
    b, n, _ = o.shape
    out = torch.add(x_res, bias)
    out.view(b * n, -1).addmm_(o.reshape(b * n, -1), weight.t())
    return out
