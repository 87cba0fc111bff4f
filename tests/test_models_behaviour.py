"""Tiny presets: bf16 vs fp32, gradient checkpointing, quantiser, preset recognition, input errors."""
from __future__ import annotations

import math

import pytest
import torch

import cascadekit.codec.models.unet as unet_module
from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.models import Previewer, PreviewerConfig, StageA, StageAConfig, StageB, StageBConfig, VectorQuantize
from cascadekit.codec.models import stage_a as stage_a_module
from cascadekit.codec.models import stage_b as stage_b_module
from cascadekit.codec.models.blocks import r_embedding
from cascadekit.generator import StageC, StageCConfig
from cascadekit.generator import stage_c as stage_c_module


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter (the official init zeroes several, which would make outputs trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(fan_in) if p.dim() > 1 else 0.2))
    return model


def tiny_b(seed=0):
    return randomize_(StageB.from_config(StageBConfig.preset("tiny")), seed)


def tiny_c(seed=0):
    return randomize_(StageC.from_config(StageCConfig.preset("tiny")), seed)


def b_inputs(batch=2, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 4, size, size, generator=g),
        r=torch.rand(batch, generator=g),
        effnet=torch.randn(batch, 16, 6, 6, generator=g),
        clip=torch.randn(batch, 1, 32, generator=g),
        pixels=torch.rand(batch, 3, 8, 8, generator=g),
    )


def c_inputs(batch=2, size=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, size, size, generator=g),
        r=torch.rand(batch, generator=g),
        clip_text=torch.randn(batch, 7, 32, generator=g),
        clip_text_pooled=torch.randn(batch, 1, 32, generator=g),
        clip_img=torch.randn(batch, 1, 24, generator=g),
    )


def test_tiny_stage_b_decodes_24x24_to_256x256():
    model = tiny_b().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 256, 256), torch.rand(1), torch.randn(1, 16, 24, 24), torch.randn(1, 1, 32))
    assert out.shape == (1, 4, 256, 256) and torch.isfinite(out).all()
    # the structural features of the tiny preset are really there
    assert any(len(m) for m in model.up_repeat_mappers)
    assert any(hasattr(b, "attention") for level in model.down_blocks for b in level)
    assert any(hasattr(b, "mapper_sca") for level in model.down_blocks for b in level)


def test_tiny_stage_c_structure_and_shape():
    model = tiny_c().eval()
    with torch.no_grad():
        out = model(**c_inputs())
    assert out.shape == (2, 16, 12, 12)
    assert any(len(m) for m in model.up_repeat_mappers)
    assert all(hasattr(model.down_blocks[0][1], f"mapper_{c}") for c in ("sca", "crp"))


@pytest.mark.parametrize("which", ["b", "c"])
def test_bf16_forward_close_to_fp32(which):
    model, inputs = (tiny_b(), b_inputs()) if which == "b" else (tiny_c(), c_inputs())
    model.eval()
    with torch.no_grad():
        ref = model(**inputs)
        low = model.to(torch.bfloat16)(**inputs)  # fp32 inputs are cast to the model dtype
    assert low.dtype == torch.bfloat16
    err = (low.float() - ref).norm() / ref.norm()
    assert err < 0.05, err
    # and the t_cond inputs matter in both precisions
    with torch.no_grad():
        other = model(**inputs, sca=torch.full_like(inputs["r"], 0.5))
    assert (other.float() - low.float()).abs().max() > 1e-2


@pytest.mark.parametrize("which", ["b", "c"])
def test_gradient_checkpointing_gives_same_gradients(which, monkeypatch):
    calls = []
    real = unet_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(unet_module, "checkpoint", counting)
    grads = {}
    for flag in (False, True):
        model = (tiny_b() if which == "b" else tiny_c()).train()  # dropout active: RNG must be replayed
        model.gradient_checkpointing = flag
        inputs = b_inputs(size=32) if which == "b" else c_inputs(size=8)
        torch.manual_seed(123)
        model(**inputs).square().mean().backward()
        grads[flag] = {n: p.grad.clone() for n, p in model.named_parameters()}
    n_blocks = sum(len(level) for level in model.down_blocks) + sum(len(level) for level in model.up_blocks)
    assert len(calls) >= n_blocks and set(calls) == {False}
    assert grads[True].keys() == grads[False].keys()
    nonzero = 0
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")
        nonzero += bool(g.abs().sum() > 0)
    assert nonzero == len(grads[False])  # every parameter is trained


def test_gradient_checkpointing_is_off_in_eval():
    model = tiny_b().eval()
    model.gradient_checkpointing = True
    called = []
    orig = unet_module.checkpoint
    unet_module.checkpoint = lambda *a, **k: called.append(1) or orig(*a, **k)
    try:
        with torch.no_grad():
            model(**b_inputs())
    finally:
        unet_module.checkpoint = orig
    assert not called


def test_attention_dropout_only_in_training():
    model = tiny_c()
    inputs = c_inputs()
    model.eval()
    with torch.no_grad():
        a, b = model(**inputs), model(**inputs)
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        c = model(**inputs)
        torch.manual_seed(1)
        d = model(**inputs)
    assert not torch.allclose(c, d)


def test_r_embedding_expression_and_odd_width():
    r = torch.tensor([0.0, 0.25, 0.993583])
    emb = r_embedding(r, 64)
    assert emb.shape == (3, 64) and emb.dtype == torch.float32
    assert torch.equal(emb[0, :32], torch.zeros(32)) and torch.equal(emb[0, 32:], torch.ones(32))
    freqs = torch.arange(32).float().mul(-math.log(10000) / 31).exp()
    assert torch.equal(emb[2, :32], (r[2] * 10000 * freqs).sin())  # r*10000 first, bit for bit
    odd = r_embedding(r, 65)
    assert odd.shape == (3, 65) and torch.equal(odd[:, -1], torch.zeros(3))


def test_vector_quantize_nearest_and_straight_through():
    torch.manual_seed(0)
    vq = VectorQuantize(4, k=32)
    with torch.no_grad():
        vq.codebook.weight.normal_()
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    q, (vq_loss, commit_loss), idx = vq(x, dim=1)
    flat = x.detach().movedim(1, -1).reshape(-1, 4)
    brute = torch.cdist(flat, vq.codebook.weight.detach()).argmin(dim=1)
    assert torch.equal(idx.reshape(-1), brute) and idx.shape == (2, 5, 5)
    assert torch.equal(q.detach().movedim(1, -1).reshape(-1, 4), vq.codebook.weight.detach()[brute])
    assert torch.allclose(vq_loss, commit_loss)
    w = torch.randn_like(q)
    (q * w).sum().backward()
    assert torch.equal(x.grad, w)  # straight-through
    vq_loss.backward()
    assert vq.codebook.weight.grad.abs().sum() > 0


def test_stage_a_tiny_roundtrip_shapes():
    model = StageA.from_config(StageAConfig.preset("tiny")).eval()
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        q, latents, idx, loss = model.encode(images, quantize=True)
        assert q.shape == latents.shape == (1, 4, 8, 8) and idx.shape == (1, 8, 8) and loss.dim() == 0
        assert model.encode(images)[1:] == (None, None, None)
        assert model.decode(q).shape == (1, 3, 32, 32)
    assert model.vquantizer.codebook.weight.shape == (64, 4)
    assert model.encode(images)[0].sub(latents).abs().max() < 1e-6  # unquantised latents are the same tensor


@pytest.mark.parametrize(
    "module,model_cls,cfg_cls,preset",
    [(stage_b_module, StageB, StageBConfig, "tiny"), (stage_c_module, StageC, StageCConfig, "tiny"),
     (stage_a_module, StageA, StageAConfig, "tiny")],
)
def test_infer_preset_tiny(module, model_cls, cfg_cls, preset):
    state = model_cls.from_config(cfg_cls.preset(preset)).state_dict()
    assert module.infer_preset(state) == cfg_cls.preset(preset)
    state.pop(next(iter(state)))
    with pytest.raises(WeightsError, match="official"):
        module.infer_preset(state)


def test_configs_round_trip_and_reject_unknown_presets():
    for cls in (StageAConfig, PreviewerConfig, StageBConfig, StageCConfig):
        for name in cls.PRESETS:
            cfg = cls.preset(name)
            assert cls(**cfg.kwargs()) == cfg
        with pytest.raises(ValueError, match="choose one of"):
            cls.preset("huge")
    assert Previewer.from_config(PreviewerConfig.preset("tiny"))(torch.randn(1, 16, 3, 3)).shape == (1, 3, 24, 24)


def test_bad_inputs_raise_input_error():
    model = tiny_b().eval()
    inputs = b_inputs()
    with pytest.raises(InputError, match="multiples of patch_size=4"):
        model(**{**inputs, "x": torch.randn(2, 4, 62, 64)})
    with pytest.raises(InputError, match=r"\(B, 4, H, W\)"):
        model(**{**inputs, "x": torch.randn(2, 16, 64, 64)})
    with pytest.raises(InputError, match="one noise level per sample"):
        model(**{**inputs, "r": torch.rand(3)})


def test_odd_sizes_work_through_skip_interpolation():
    model = tiny_b().eval()
    with torch.no_grad():
        out = model(**{**b_inputs(), "x": torch.randn(2, 4, 52, 44)})  # 13x11 tokens: levels 13->6->3->1
    assert out.shape == (2, 4, 52, 44) and torch.isfinite(out).all()


def test_autocast_bf16_training_step_runs():
    model = tiny_c().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**c_inputs())
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_wrapped_blocks_dispatch_like_plain_ones():
    """FSDP / checkpoint wrappers hide the block type; the trunk must still pass skip, clip and r_embed."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model = tiny_c().eval()
    inputs = c_inputs()
    with torch.no_grad():
        ref = model(**inputs)
        for levels in (model.down_blocks, model.up_blocks):
            for level in levels:
                for i in range(len(level)):
                    level[i] = checkpoint_wrapper(level[i])
        out = model(**inputs)
    assert type(model.up_blocks[1][0]).__name__ == "CheckpointWrapper"
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_stage_c_controlnet_projections_are_added_in_order():
    from cascadekit.codec.models.blocks import ResBlock

    model = tiny_c().eval()
    inputs = c_inputs()
    shapes = []  # (B, C, H, W) of x at every ResBlock call, in call order (repeats included)
    hooks = [m.register_forward_pre_hook(lambda mod, args: shapes.append(args[0].shape))
             for m in model.modules() if isinstance(m, ResBlock)]
    with torch.no_grad():
        ref = model(**inputs)
    for h in hooks:
        h.remove()
    assert len(shapes) == 1 + 2 + 2 * 2 + 1  # down 1 + 2, up level 1 twice (repeat mapper), up level 0
    with torch.no_grad():
        zeros = model(**inputs, cnet=[torch.zeros(s) for s in shapes])
        first = model(**inputs, cnet=[torch.ones(2, 32, 3, 3)])  # resized to the level (12x12)
        skipped = model(**inputs, cnet=[None, torch.ones(shapes[1])])
    torch.testing.assert_close(zeros, ref)
    assert (first - ref).abs().max() > 1e-3 and (skipped - ref).abs().max() > 1e-3
    assert (first - skipped).abs().max() > 1e-3  # position in the list matters


def test_official_init_zeroes_output_and_timestep_mappers():
    model = StageB.from_config(StageBConfig.preset("tiny")).eval()
    assert torch.count_nonzero(model.clf[1].weight) == 0
    assert torch.count_nonzero(model.down_blocks[0][1].mapper.weight) == 0
    assert torch.count_nonzero(model.down_blocks[0][0].channelwise[0].weight) > 0
    with torch.no_grad():
        out = model(**b_inputs())
    assert torch.count_nonzero(out) == 0


def test_presets_are_fresh_copies_and_unknown_names_are_refused():
    from cascadekit.codec.models import StageBConfig

    cfg = StageBConfig.preset("lite")
    cfg.c_hidden.append(1)  # a caller editing its config must not edit the preset
    assert StageBConfig.preset("lite").c_hidden == [320, 576, 1152, 1152]
    with pytest.raises(ValueError, match="unknown StageB preset 'huge'; choose one of big, lite, tiny"):
        StageBConfig.preset("huge")
