"""The ControlNet chain on the command line with the tiny weights: encode --controls, inspect (control lines + the
canny preview row), add-controls, train --config controlnet_canny, sample --controlnet RUN; bad --controls."""
from __future__ import annotations

import json

import pytest
from _tiny_weights import mirror, tiny_weights_dir
from click.testing import CliRunner
from controlnet_train_helpers import block_images

from cascadekit.cli.main import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("cncli")
    weights = mirror(tiny_weights_dir(tmp_path_factory), d / "weights")
    images = block_images(d / "images", n=8)
    store = d / "s.zarr"
    r = _run("encode", images, "--out", store, "--weights", weights, "--resolution", 64, "--batch-size", 4,
             "--chunk-rows", 4, "--num-workers", 0, "--controls", "canny,inpaint", "--text-embeddings", "--quiet")
    assert r.exit_code == 0, r.output
    return weights, store, d


def test_unknown_control_fails_before_work(tmp_path):
    r = _run("encode", tmp_path, "--out", tmp_path / "s.zarr", "--controls", "canny,edges")
    assert r.exit_code == 2 and "unknown control(s) 'edges'" in r.output
    assert not (tmp_path / "s.zarr").exists()
    r = _run("add-controls", tmp_path, "--controls", "depth")
    assert r.exit_code == 2 and "unknown control(s) 'depth'" in r.output


def test_inspect_shows_controls_and_add_controls(chain):
    weights, store, _ = chain
    r = _run("inspect", store, "--weights", weights)
    assert r.exit_code == 0, r.output
    assert "control  canny   [224, 224] uint8, ok 8" in r.output and "control  inpaint" in r.output
    assert (store / "inspect" / "controls_canny.png").is_file()
    r = _run("add-controls", store, "--controls", "sr", "--weights", weights, "--quiet")
    assert r.exit_code == 0 and "added sr to 8 rows" in r.output, r.output
    r = _run("inspect", store, "--no-preview", "--json")
    groups = json.loads(r.output)["groups"]
    assert set(groups["/"]["controls"]) == {"canny", "sr", "inpaint"}


def test_train_controlnet_then_sample_from_the_run(chain, tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADEKIT_OFFLINE", "1")  # a test never downloads the backbone's ImageNet weights
    weights, store, d = chain
    run = tmp_path / "run"
    r = _run("train", "--data", store, "--config", "controlnet_canny", "--out", run, "--init", weights,
             "--text-encoder", weights, "--set", "model=tiny", "--set", "batch_size=2", "--set", "steps=2",
             "--set", "save_every=2", "--set", "precision=fp32", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "precomputed in the store" in r.output
    assert "effnet backbone from" in r.output  # which start the backbone got is said in the log
    assert (run / "checkpoints" / "step_000002" / "controlnet.safetensors").is_file()
    out = tmp_path / "img"
    r = _run("sample", "a fox", "--weights", weights, "--control", "canny", "--control-image",
             d / "images" / "img000.png", "--controlnet", run, "--height", 64, "--width", 64, "--steps", 2,
             "--decoder-steps", 1, "--out", out)
    assert r.exit_code == 0, r.output
    assert any(p.name.endswith("_control.png") for p in out.iterdir())
