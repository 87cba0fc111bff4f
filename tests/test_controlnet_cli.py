"""`cascadekit sample --control ...` and `cascadekit upscale` on the tiny weights: outputs, determinism, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from _tiny_weights import mirror, tiny_weights_dir
from click.testing import CliRunner
from controlnet_helpers import write_controlnet
from PIL import Image

from cascadekit.cli.main import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cncli")
    weights = mirror(tiny_weights_dir(tmp_path_factory), d / "weights")
    for control, name in (("canny", "canny"), ("inpainting", "inpainting"), ("sr", "super_resolution")):
        write_controlnet(weights / "controlnet" / f"{name}.safetensors", control, seed=2)
    rng = np.random.default_rng(1)
    photo = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(d / "photo.png")
    mask = np.zeros((40, 56), np.uint8)
    mask[8:30, 10:40] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(mask[:, :50]).save(d / "mask_small.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    return weights, d


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


SMALL = ["--height", 64, "--width", 64, "--steps", 2, "--decoder-steps", 1]


def test_sample_with_canny_writes_the_control_and_is_deterministic(setup, tmp_path):
    weights, d = setup
    outs = []
    for name in ("a", "b"):
        r = _run("sample", "a fox", "--weights", weights, "--out", tmp_path / name, "--seed", 4, *SMALL,
                 "--control", "canny", "--control-image", d / "photo.png")
        assert r.exit_code == 0, r.output
        outs.append(tmp_path / name)
    pngs = sorted(p.name for p in outs[0].glob("*.png"))
    assert "image_4_000.png" in pngs and "image_4_000_control.png" in pngs
    assert np.array_equal(np.array(Image.open(outs[0] / "image_4_000.png")), np.array(Image.open(outs[1] / "image_4_000.png")))
    rec = json.loads((outs[0] / "samples.json").read_text())["samples"][0]
    assert rec["control"] == "canny" and rec["controlnet"].endswith("controlnet/canny.safetensors")


def test_sample_inpainting_with_mask_and_paste_back(setup, tmp_path):
    weights, d = setup
    r = _run("sample", "a fox", "--weights", weights, "--out", tmp_path / "o", "--seed", 1, *SMALL,
             "--control", "inpainting", "--control-image", d / "photo.png", "--mask", d / "mask.png", "--paste-back")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "o" / "samples.json").read_text())["samples"][0]
    assert rec["strength"] == 1.0 and rec["paste_back"] is True and rec["mask"].endswith("mask.png")


def test_upscale_command(setup, tmp_path):
    weights, d = setup
    r = _run("upscale", d / "photo.png", "--weights", weights, "--out", tmp_path / "u", "--seed", 0, "--steps", 2,
             "--decoder-steps", 1)
    assert r.exit_code == 0, r.output
    out = tmp_path / "u" / "upscaled_0_000.png"
    assert Image.open(out).size == (112, 80) and (tmp_path / "u" / "upscaled_0_000_control.png").is_file()
    assert json.loads((tmp_path / "u" / "samples.json").read_text())["samples"][0]["prior_guidance"] == 1.0


@pytest.mark.parametrize("extra, message", [
    (["--control", "canny"], "needs --control-image"),
    (["--control-image", "photo.png"], "--control-image needs --control"),
    (["--control", "canny", "--control-image", "photo.png", "--mask", "mask.png"], "only apply to --control inpainting"),
    (["--control", "inpainting", "--control-image", "photo.png"], "exactly one of --mask M or --outpaint"),
    (["--control", "inpainting", "--control-image", "photo.png", "--mask", "mask_small.png"],
     "mask_small.png is 50x40 pixels but its image is 56x40"),
    (["--control", "canny", "--control-image", "corrupt.png"], "corrupt.png"),
    (["--control", "canny", "--control-image", "missing.png"], "missing.png"),
    (["--control", "depth", "--control-image", "photo.png"], "depth"),
    (["--control", "canny", "--control-image", "photo.png", "--control-strength", "nan"], "not a finite number"),
])
def test_bad_control_inputs_fail_before_weights_load(setup, tmp_path, extra, message):
    weights, d = setup
    extra = [str(d / e) if e.endswith(".png") else e for e in extra]
    r = _run("sample", "a fox", "--weights", tmp_path / "no-weights-here", "--out", tmp_path / "o", *SMALL, *extra)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_controlnet_for_another_stage_c_is_refused_before_weights_load(setup, tmp_path, monkeypatch):
    weights, d = setup

    def no_load(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr("cascadekit.generator.pipeline.TextToImagePipeline.from_pretrained", no_load)
    wide = write_controlnet(tmp_path / "wide.safetensors", "canny", c_proj=48)
    r = _run("sample", "a fox", "--weights", weights, "--out", tmp_path / "o", *SMALL, "--control", "canny",
             "--control-image", d / "photo.png", "--controlnet", wide)
    assert r.exit_code == 2 and "projects to 48 channels" in r.output, r.output
    assert not list((tmp_path / "o").glob("*.png"))
    r = _run("sample", "a fox", "--weights", weights, "--out", tmp_path / "o2", *SMALL, "--control", "sr",
             "--control-image", d / "photo.png", "--controlnet", weights / "controlnet" / "canny.safetensors")
    assert r.exit_code == 2 and "is a canny ControlNet" in r.output, r.output
    r = _run("upscale", d / "photo.png", "--weights", weights, "--out", tmp_path / "o3",
             "--controlnet", write_controlnet(tmp_path / "far.safetensors", "sr", proj_blocks=[1, 40]))
    assert r.exit_code == 2 and "ResBlock calls [40]" in r.output, r.output
