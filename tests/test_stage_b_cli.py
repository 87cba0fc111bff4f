"""Stage B from the command line: encode --stage-a, train finetune-style config, reconstruct / evaluate with the run."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cascadekit.cli.main import main as cli


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from _tiny_weights import tiny_weights_dir

    return tiny_weights_dir(tmp_path_factory)


def _ok(args):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def test_encode_train_and_use_a_stage_b_run(weights, tmp_path):
    from stage_b_helpers import photo_folder

    imgs = photo_folder(tmp_path / "imgs", n=4, side=128)
    store = tmp_path / "s.zarr"
    _ok(["encode", imgs, "--out", store, "--weights", weights, "--resolution", 128, "--encoder-resolution", 128,
         "--stage-a", "--dtype", "float32", "--num-workers", 0, "--quiet", "--no-preview", "--batch-size", 4,
         "--chunk-rows", 4])
    cfg = tmp_path / "b.yaml"
    cfg.write_text("task: stage_b\npreset: tiny\nsteps: 2\nsave_every: 2\nbatch_size: 4\n")
    r = _ok(["train", "--data", store, "--config", cfg, "--out", tmp_path / "run", "--init", weights, "--device", "cpu"])
    assert "Stage B (tiny)" in r.output and "no stored EfficientNet scales" in r.output
    assert (tmp_path / "run/checkpoints/step_000002/stage_b_lite.safetensors").is_file()
    r = _ok(["reconstruct", imgs / "coffee.png", "--out", tmp_path / "rec", "--weights", weights, "--size", 128,
             "--encoder-resolution", 128, "--steps", 2, "--stage-b-weights", tmp_path / "run"])
    assert "stage_b_lite.safetensors" in r.output
    _ok(["evaluate", imgs, "--out", tmp_path / "ev", "--weights", weights, "--size", 128, "--encoder-resolution", 128,
         "--steps", 2, "--metrics", "psnr", "--stage-b-weights", tmp_path / "run", "--compare", "--quiet"])
    summary = json.loads((tmp_path / "ev/compare.json").read_text())
    assert summary["decoders"] == ["base", "finetuned"] and summary["n_images_compared"] == 4
    assert (tmp_path / "ev/finetuned/metrics.json").is_file() and (tmp_path / "ev/index.html").is_file()


def test_stage_b_flags_are_checked_first(weights, tmp_path):
    r = CliRunner().invoke(cli, ["evaluate", "--out", str(tmp_path / "e"), "--compare"])
    assert r.exit_code == 2 and "--compare needs --stage-b-weights" in r.output
    r = CliRunner().invoke(cli, ["reconstruct", "--out", str(tmp_path / "r"), "--ema"])
    assert r.exit_code == 2 and "--ema needs --stage-b-weights" in r.output
    assert not (tmp_path / "e").exists() and not (tmp_path / "r").exists()
