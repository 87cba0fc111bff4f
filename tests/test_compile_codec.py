"""codec.compile.compile_codec: a Codec's EfficientNet / Stage B / Stage A compiled and checked in place
(`encode --compile`, `reconstruct --compile`), on CPU with the tiny weights and the aot_eager backend."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_weights import tiny_weights_dir
from click.testing import CliRunner
from PIL import Image

from cascadekit.cli.main import main
from cascadekit.codec import compile as C
from cascadekit.codec.codec import Codec
from cascadekit.codec.errors import InputError, PrecisionError

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import store_arrays  # noqa: E402

FAST = C.CompileSettings(backend="aot_eager")
TRACE = C.CompileSettings(backend="eager")  # dynamo's graphs run eagerly: the cheapest real compile on CPU


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


def _codec(weights) -> Codec:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Codec.from_pretrained(weights, device="cpu", encoder_resolution=32, allow_zero_text=True)


def test_compiled_codec_reconstructs_like_eager(weights):
    codec = _codec(weights)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    eager = codec.reconstruct(x, seed=1, steps=1)
    eager_a = codec.encode_stage_a(x)
    parts = C.compile_codec(codec, ("stage_b", "stage_a"), FAST)  # the effnet: compiled in the CLI test below
    fast = codec.reconstruct(x, seed=1, steps=1)
    fast_a = codec.encode_stage_a(x)
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_a, eager_a, atol=1e-4, rtol=1e-4)
    checks = [parts["stage_b"], *parts["stage_a"].compiled_methods.values()]
    assert all(w.compiled and w.checked_max_abs_diff is not None for w in checks)  # every first use was checked
    assert C.unwrap(codec.stage_a) is parts["stage_a"].module and codec.stage_a.c_latent == C.unwrap(
        codec.stage_a).c_latent  # attributes read through


def test_wrong_compiled_encoder_stops_encoding(weights):
    def off(gm, example_inputs):
        return lambda *a: [o + 0.5 if isinstance(o, torch.Tensor) else o for o in gm(*a)]

    codec = _codec(weights)
    C.compile_codec(codec, ("stage_a",), C.CompileSettings(backend=off))
    with pytest.raises(PrecisionError, match="Stage A.encode: torch.compile output differs from eager"):
        codec.encode_stage_a(torch.rand(1, 3, 32, 32))
    partial = Codec(None, None, None)
    with pytest.raises(InputError, match="loaded without it"):
        C.compile_codec(partial, ("stage_b",))


def test_cli_encode_and_reconstruct_compile(weights, tmp_path, monkeypatch):
    """--compile reaches compile_codec with each command's networks; the compiled encoder's store equals eager's
    (reconstruct's networks compiled are checked above: here only which ones it asks for)."""
    seen = []
    real = C.compile_codec

    def spy(codec, parts, settings=None):
        seen.append(tuple(parts))
        return real(codec, parts, TRACE) if parts == ("effnet",) else {}

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    common = ["encode", str(folder), "--weights", str(weights), "--resolution", "64", "--batch-size", "1",
              "--chunk-rows", "4", "--num-workers", "0", "--device", "cpu", "--no-preview", "--quiet",
              "--dtype", "float32"]
    r = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "eager.zarr")])
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(C, "compile_codec", spy)
    r = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "fast.zarr"), "--compile"])
    assert r.exit_code == 0, r.output
    a, b = store_arrays(tmp_path / "eager.zarr"), store_arrays(tmp_path / "fast.zarr")
    np.testing.assert_allclose(b["/latents"], a["/latents"], atol=1e-4, rtol=1e-4)
    r = CliRunner().invoke(main, ["reconstruct", str(folder / "0.png"), "--out", str(tmp_path / "rec"), "--weights",
                                  str(weights), "--size", "64", "--encoder-resolution", "32", "--steps", "1",
                                  "--device", "cpu", "--allow-zero-text", "--compile"])
    assert r.exit_code == 0, r.output
    assert seen == [("effnet",), ("effnet", "stage_b", "stage_a")]
