"""The fused inference paths of ResBlock / AttnBlock (codec.models.fused): taken exactly when allowed, and
equal to the module-by-module path (which training uses) up to float rounding."""
from __future__ import annotations

import pytest
import torch

import cascadekit.codec.models.blocks as blocks
import cascadekit.codec.models.stage_b as stage_b
from cascadekit.codec.models.blocks import AttnBlock, ResBlock
from cascadekit.codec.models.fused import fused_weights
from cascadekit.codec.models.stage_b import StageB, StageBConfig
from cascadekit.generator import StageC, StageCConfig


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (the official init zeroes GRN gammas / TimestepBlock mappers / the classifier)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5 if p.dim() > 1 else 0.3))
    return model.eval()


def stage_inputs(stage: str, cfg, g: torch.Generator) -> dict:
    if stage == "b":
        return dict(x=torch.randn(2, 4, 32, 32, generator=g), r=torch.rand(2, generator=g),
                    effnet=torch.randn(2, 16, 6, 6, generator=g), clip=torch.randn(2, 1, cfg.c_clip, generator=g),
                    sca=torch.rand(2, generator=g))
    return dict(x=torch.randn(2, 16, 8, 8, generator=g), r=torch.rand(2, generator=g),
                clip_text=torch.randn(2, 5, cfg.c_clip_text, generator=g),
                clip_text_pooled=torch.randn(2, 1, cfg.c_clip_text_pooled, generator=g),
                clip_img=torch.randn(2, 1, cfg.c_clip_img, generator=g), sca=torch.rand(2, generator=g))


def counting(monkeypatch) -> dict:
    """Count the calls of the fused kernels the blocks (and Stage B's conditioning mappers) use."""
    calls = {"res": 0, "attn": 0, "mapper": 0}
    res, attn, mapper = blocks.res_block_mlp, blocks.attention_heads, stage_b.conv_mlp

    def mapper_counted(*a, **k):
        calls["mapper"] += 1
        return mapper(*a, **k)

    def res_counted(*a, **k):
        calls["res"] += 1
        return res(*a, **k)

    def attn_counted(*a, **k):
        calls["attn"] += 1
        return attn(*a, **k)

    monkeypatch.setattr(blocks, "res_block_mlp", res_counted)
    monkeypatch.setattr(blocks, "attention_heads", attn_counted)
    monkeypatch.setattr(stage_b, "conv_mlp", mapper_counted)
    return calls


@pytest.mark.parametrize("stage", ["b", "c"])
def test_fused_forward_equals_module_forward(stage, monkeypatch):
    cls, cfg = (StageB, StageBConfig.preset("tiny")) if stage == "b" else (StageC, StageCConfig.preset("tiny"))
    model = randomized(cls.from_config(cfg))
    model.requires_grad_(False)
    inputs = stage_inputs(stage, cfg, torch.Generator().manual_seed(1))
    calls = counting(monkeypatch)
    ref = model(**inputs)  # grad enabled: the module path
    assert calls == {"res": 0, "attn": 0, "mapper": 0}
    with torch.inference_mode():
        fused = model(**inputs)
    n_res = sum(isinstance(m, ResBlock) for m in model.modules())
    n_attn = sum(isinstance(m, AttnBlock) for m in model.modules())
    assert calls["res"] >= n_res and calls["attn"] >= n_attn  # every block took its fused path
    assert calls["mapper"] == (2 if stage == "b" else 0)  # Stage B's effnet and pixels mappers
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("self_attn", [True, False])
def test_fused_blocks_equal_module_blocks_with_skip_and_without_self_attention(self_attn):
    g = torch.Generator().manual_seed(2)
    res = randomized(ResBlock(24, c_skip=8))
    attn = randomized(AttnBlock(24, 16, nhead=3, self_attn=self_attn))
    x = torch.randn(2, 5, 7, 24, generator=g).permute(0, 3, 1, 2)  # channels-last memory, as in the trunk
    skip, cond = torch.randn(2, 8, 5, 7, generator=g), torch.randn(2, 4, 16, generator=g)
    with torch.no_grad():
        assert fused_weights(res, x, res._mlp_weights) and fused_weights(attn, x, attn._attention_weights)
        fused = (res(x, skip), attn(x, cond), res(x.contiguous(), skip))  # NCHW-contiguous input too
    ref = (res(x, skip), attn(x, cond), res(x.contiguous(), skip))
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fused_weights_refuses_training_grad_autocast_and_foreign_weights():
    block = ResBlock(8).eval()
    x = torch.randn(1, 8, 4, 4)
    reads = []

    def read():
        reads.append(1)
        return block._mlp_weights()

    with torch.no_grad():
        assert fused_weights(block, x, read) is not None
        assert fused_weights(block, x.double(), read) is None  # weights in another dtype than x
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fused_weights(block, x, read) is None
        assert fused_weights(block.train(), x, read) is None  # dropout is active in training mode
    assert fused_weights(block.eval(), x, read) is None  # grad enabled: autograd records the module path
    assert len(reads) == 2  # only where the mode allows the fused path are the weights read at all


class CountingDelta(torch.nn.Module):
    """A parametrization ``W -> W + delta`` that counts how often the weight is computed (as a LoRA's is)."""

    def __init__(self, shape):
        super().__init__()
        self.delta, self.calls = torch.nn.Parameter(torch.randn(shape) * 0.01), 0

    def forward(self, w):
        self.calls += 1
        return w + self.delta


def test_parametrized_weights_are_computed_once_per_block_call_and_used():
    from torch.nn.utils import parametrize

    g = torch.Generator().manual_seed(5)
    res, attn = randomized(ResBlock(16)), randomized(AttnBlock(16, 8, nhead=2))
    x = torch.randn(1, 6, 5, 16, generator=g).permute(0, 3, 1, 2)
    cond = torch.randn(1, 3, 8, generator=g)
    targets = [(res.channelwise[0], "weight"), (res.channelwise[4], "weight"),
               (attn.attention.attn, "in_proj_weight"), (attn.attention.attn.out_proj, "weight")]
    deltas = [CountingDelta(getattr(m, n).shape) for m, n in targets]
    for (m, n), d in zip(targets, deltas):
        parametrize.register_parametrization(m, n, d)
        d.calls = 0  # registration evaluates it once
    with torch.no_grad():
        fused = (res(x), attn(x, cond))
        assert [d.calls for d in deltas] == [1, 1, 1, 1]
    ref = (res(x), attn(x, cond))  # grad enabled: the module path, which reads each weight once too
    assert [d.calls for d in deltas] == [2, 2, 2, 2]
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_training_gradients_flow_through_the_module_path(monkeypatch):
    cfg = StageCConfig.preset("tiny")
    model = randomized(StageC.from_config(cfg)).train()
    calls = counting(monkeypatch)
    out = model(**stage_inputs("c", cfg, torch.Generator().manual_seed(3)))
    out.square().mean().backward()
    assert calls == {"res": 0, "attn": 0, "mapper": 0}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())



def offloaded(module: torch.nn.Module) -> None:
    """Emulate sequential offload of one submodule: its own parameters stay stored elsewhere (here: as
    bfloat16) and the usable float32 ones are swapped in only for its own call (forward pre-hook), as
    accelerate's hooks do with devices."""
    own = dict(module.named_parameters(recurse=False))
    usable = {k: v.detach().clone() for k, v in own.items()}
    stored = {k: v.detach().bfloat16() for k, v in own.items()}

    def swap(params):
        for k, v in params.items():
            setattr(module, k, torch.nn.Parameter(v, requires_grad=False))

    swap(stored)
    module.register_forward_pre_hook(lambda mod, args: swap(usable))
    module.register_forward_hook(lambda mod, args, out: swap(stored))


@pytest.mark.parametrize("name", ["res.channelwise.0", "res.channelwise.2", "res.channelwise.4",
                                  "attn.attention.attn", "attn.attention.attn.out_proj"])
def test_a_block_takes_the_module_path_when_a_weight_it_reads_directly_is_offloaded(name, monkeypatch):
    g = torch.Generator().manual_seed(4)
    blocks_ = torch.nn.ModuleDict({"res": randomized(ResBlock(16)), "attn": randomized(AttnBlock(16, 8, nhead=2))})
    x = torch.randn(1, 6, 5, 16, generator=g).permute(0, 3, 1, 2)
    cond = torch.randn(1, 3, 8, generator=g)
    run = {"res": lambda: blocks_["res"](x), "attn": lambda: blocks_["attn"](x, cond)}[name.split(".")[0]]
    with torch.no_grad():
        ref = run()
        offloaded(blocks_.get_submodule(name))
        calls = counting(monkeypatch)
        out = run()
    assert calls == {"res": 0, "attn": 0, "mapper": 0}  # the check saw the offloaded weight
    torch.testing.assert_close(out, ref)
