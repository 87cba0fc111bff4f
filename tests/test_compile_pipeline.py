"""TextToImagePipeline.enable_compile: sampling through a compiled Stage C gives the eager result (CPU, tiny weights)."""
from __future__ import annotations

import warnings

import pytest
import torch
from _tiny_weights import tiny_weights_dir

from cascadekit.codec.compile import CompileSettings
from cascadekit.codec.errors import PrecisionError
from cascadekit.generator.pipeline import TextToImagePipeline

SMALL = dict(height=64, width=96, prior_steps=3, decoder_steps=2)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TextToImagePipeline.from_pretrained(tiny_weights_dir(tmp_path_factory))


def test_compiled_prior_samples_like_eager(pipe):
    eager = pipe(["a red fox"], seed=3, **SMALL)
    pipe.enable_compile(CompileSettings(backend="aot_eager"))
    try:
        fast = pipe(["a red fox"], seed=3, **SMALL)
        assert pipe.compiled_stage_c.checked_max_abs_diff is not None  # the first-use check ran
        assert list(pipe.stage_c.state_dict()) == list(pipe.compiled_stage_c.module.state_dict())
    finally:
        pipe.compiled_stage_c = None
    torch.testing.assert_close(fast.latents, eager.latents, atol=1e-4, rtol=1e-4)


def test_wrong_compiled_prior_stops_sampling(pipe):
    def off_by_one(gm, example_inputs):
        return lambda *a: [o + 1.0 if isinstance(o, torch.Tensor) else o for o in gm(*a)]

    pipe.enable_compile(CompileSettings(backend=off_by_one))
    try:
        with pytest.raises(PrecisionError, match="Stage C: torch.compile output differs from eager"):
            pipe(["a red fox"], seed=3, **SMALL)
    finally:
        pipe.compiled_stage_c = None
