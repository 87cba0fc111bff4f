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
* Stage B's conditioning mappers (1x1 convs around a GELU): GEMMs over channels-last tokens.
* Attention: key and value are copied head-major and contiguous (B, 2h, M, d) after their GEMM,
  which the CPU flash kernel reads faster than the strided views of a packed Linear output
  (bit-identical values); the output projection accumulates onto the residual.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def fused_ok(block: nn.Module, x: torch.Tensor, weights: Iterable[torch.Tensor] | None = None) -> bool:
    """True when ``block`` may take its fused path on ``x``: grad disabled, eval mode (dropout is the
    identity), no autocast, and each of ``weights`` (the tensors the fused path reads without calling
    their module; default: all of ``block``'s parameters) already on ``x``'s device in ``x``'s dtype.

    Forward hooks on the submodules whose weights are read directly do not run on the fused path
    (hooks on the block itself do); sequential offload, which moves each submodule in a pre-hook,
    leaves those weights elsewhere and so gets the module-by-module path. The weights are passed
    explicitly because walking ``block.parameters()`` costs ~28 µs a call (about 1 % of a 2-thread
    Stage B forward); reading the attributes at each call cannot go stale the way a cached list
    would when parameters are replaced (``load_state_dict(assign=True)``, LoRA injection).
    """
    # meta tensors (shape/FLOP counting) have no autocast state to ask: they take the module path
    if x.device.type == "meta" or torch.is_grad_enabled() or block.training \
            or torch.is_autocast_enabled(x.device.type):
        return False
    device, dtype = x.device, x.dtype
    return all(p.device == device and p.dtype == dtype
               for p in (block.parameters() if weights is None else weights))


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


def conv_mlp(mapper: nn.Sequential, z: torch.Tensor) -> torch.Tensor:
    """Stage B's conditioning mapper ``Conv1x1 -> GELU -> Conv1x1 -> LayerNorm2d`` as two GEMMs over tokens.

    z (B, C, H, W) in any memory layout -> (B, c, H, W) channels-last. With 2+ threads oneDNN runs a
    1x1 conv on a few input channels at a fraction of the GEMM rate (measured on the effnet mapper at
    64x64: 16 -> 256 channels 1.96 ms as a conv, 0.52 ms as ``addmm``; the whole mapper 5.7 -> 2.9 ms).
    """
    conv1, _, conv2, norm = mapper
    b, c, h, w = z.shape
    t = z.permute(0, 2, 3, 1).reshape(b * h * w, c)  # a view for channels-last z, one copy otherwise
    hid = torch.addmm(conv1.bias, t, conv1.weight.flatten(1).t())  # (BHW, 4c)
    torch.ops.aten.gelu_(hid)
    out = torch.addmm(conv2.bias, hid, conv2.weight.flatten(1).t())  # (BHW, c_out)
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


def linear_onto(x_res: torch.Tensor, o: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    """``x_res + lin(o)`` for x_res (B, N, c_out), o (B, N, c_in) in one accumulation -> (B, N, c_out)."""
    b, n, _ = o.shape
    out = torch.add(x_res, lin.bias)
    out.view(b * n, -1).addmm_(o.reshape(b * n, -1), lin.weight.t())
    return out
