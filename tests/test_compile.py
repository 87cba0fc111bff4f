"""codec.compile: torch.compile with a check against eager on first use, eager fallback, official keys kept."""
from __future__ import annotations

import warnings

import pytest
import torch

from cascadekit.codec.compile import CompileSettings, compare_outputs, compile_checked, unwrap
from cascadekit.codec.errors import PrecisionError
from cascadekit.codec.models.blocks import ResBlock
from cascadekit.generator import StageC, StageCConfig


def _tiny_c(seed: int = 0) -> StageC:
    torch.manual_seed(seed)
    model = StageC.from_config(StageCConfig.preset("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def _inputs(model: StageC, b: int = 2):
    g = torch.Generator().manual_seed(1)
    cfg = StageCConfig.preset("tiny")
    return (torch.randn(b, 16, 8, 8, generator=g), torch.rand(b, generator=g),
            torch.randn(b, 5, cfg.c_clip_text, generator=g), torch.randn(b, 1, cfg.c_clip_text_pooled, generator=g),
            torch.randn(b, 1, cfg.c_clip_img, generator=g))


def _perturbing_backend(gm, example_inputs):
    """A 'compiler' whose graphs are off by 0.1 on every output: what the first-use check must catch."""
    def run(*args):
        out = gm(*args)
        if isinstance(out, (tuple, list)):
            return type(out)(o + 0.1 if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out)
        return out + 0.1
    return run


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler here")


def test_compiled_stage_c_matches_eager_and_keeps_official_keys():
    model = _tiny_c()
    keys = list(model.state_dict())
    inp = _inputs(model)
    with torch.no_grad():
        ref = model(*inp)
    fast = compile_checked(model, CompileSettings(backend="aot_eager"))
    with torch.no_grad():
        out = fast(*inp)
        again = fast(*inp)
    assert fast.compiled and fast.checked_max_abs_diff is not None and fast.checked_max_abs_diff < 1e-5
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=1e-5)
    assert list(unwrap(fast).state_dict()) == keys
    assert fast.c_r == model.c_r  # attributes of the network read through


def test_first_use_check_catches_a_wrong_compiled_graph():
    model = _tiny_c()
    fast = compile_checked(model, CompileSettings(backend=_perturbing_backend), name="Stage C")
    with pytest.raises(PrecisionError, match=r"Stage C: torch.compile output differs from eager .*without --compile"):
        fast(*_inputs(model))


def test_unchecked_wrong_graph_is_not_caught():
    """check=False really skips the comparison (so the check above is what catches it)."""
    model = _tiny_c()
    fast = compile_checked(model, CompileSettings(backend=_perturbing_backend, check=False))
    with torch.no_grad():
        out = fast(*_inputs(model))
        ref = model(*_inputs(model))
    assert (out - ref).abs().max() > 0.05 and fast.checked_max_abs_diff is None


def test_compiler_failure_falls_back_to_eager_with_a_warning():
    model = _tiny_c()
    fast = compile_checked(model, CompileSettings(backend=_failing_backend))
    inp = _inputs(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            out = fast(*inp)
    assert any("torch.compile failed" in str(w.message) and "no compiler here" in str(w.message) for w in caught)
    assert not fast.compiled and "no compiler here" in fast.fallback_reason
    with torch.no_grad():
        torch.testing.assert_close(out, model(*inp), atol=0, rtol=0)
        torch.testing.assert_close(fast(*inp), model(*inp), atol=0, rtol=0)


def test_check_in_training_mode_runs_eval_and_restores_train_mode():
    model = _tiny_c().train()  # tiny Stage C has dropout 0.1: a train-mode comparison would be random
    # backend "eager" (dynamo's graphs run eagerly): the check's eval/train handling does not depend on the
    # backend, and it costs ~40 % of aot_eager's time (aot_eager in training: test_compile_training.py)
    fast = compile_checked(model, CompileSettings(backend="eager"))
    out = fast(*_inputs(model))
    assert model.training and fast.checked_max_abs_diff is not None and fast.checked_max_abs_diff < 1e-5
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.grad is not None)
    assert any(p.grad is not None for p in model.parameters())


def test_compare_outputs_nan_and_shape():
    a = torch.zeros(2, 3)
    with pytest.raises(PrecisionError, match="differs"):
        compare_outputs(a.clone().fill_(float("nan")), a, "x")
    with pytest.raises(PrecisionError, match="shape"):
        compare_outputs(torch.zeros(3, 2), a, "x")
    assert compare_outputs((a + 1e-6, {"k": a}), (a, {"k": a}), "x") == pytest.approx(1e-6, rel=1e-3)


def test_inductor_resblock_matches_eager():
    """The real CPU inductor path on one ResBlock (a C compiler is needed; skipped without one)."""
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler for inductor's CPU backend")
    torch.manual_seed(0)
    block = ResBlock(16, c_skip=8).eval()
    x, skip = torch.randn(1, 16, 6, 6), torch.randn(1, 8, 6, 6)
    fast = compile_checked(block)
    with torch.no_grad():
        out = fast(x, skip)
        ref = block(x, skip)
    assert fast.compiled, fast.fallback_reason
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
