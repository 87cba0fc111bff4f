"""Attention: SDPA on the official ``nn.MultiheadAttention`` parameter layout (so checkpoints load unchanged)."""
from __future__ import annotations

import torch
from torch import nn

from cascadekit.codec.models.blocks import PackedAttention
from cascadekit.codec.models.stage_b import StageB, StageBConfig


def test_packed_attention_equals_multihead_attention_with_the_same_state_dict():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, bias=True, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    ours = PackedAttention(32, 4).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in mha.state_dict().items()}
    ours.load_state_dict(mha.state_dict(), strict=True)
    q, kv = torch.randn(2, 10, 32), torch.randn(2, 14, 32)
    with torch.no_grad():
        ref = mha(q, kv, kv, need_weights=False)[0]
        torch.testing.assert_close(ours(q, kv), ref, atol=1e-5, rtol=1e-5)


def test_stage_b_attention_goes_through_sdpa(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*a, **k):
        calls.append(a[0].shape)
        return sdpa(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    cfg = StageBConfig.preset("tiny")
    model = StageB.from_config(cfg).eval()
    n_attn = sum(1 for n, _ in model.named_modules() if n.endswith("attention.attn"))
    assert n_attn > 0
    with torch.no_grad():
        model(torch.randn(1, 4, 32, 32), torch.rand(1), torch.randn(1, 16, 4, 4), torch.randn(1, 1, cfg.c_clip))
    assert len(calls) >= n_attn  # every attention block (up-level blocks are repeated) runs SDPA
    assert all(s[1] == 4 for s in calls)  # (B, nhead, N, d): heads split as in MultiheadAttention
