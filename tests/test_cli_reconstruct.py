"""`cascadekit reconstruct` with the tiny weights, and the default-weights / sample-image helpers."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from _tiny_weights import tiny_weights_dir
from click.testing import CliRunner
from PIL import Image

from cascadekit.cli.main import main
from cascadekit.codec.defaults import (
    ENV_CACHE,
    ENV_WEIGHTS,
    default_weights,
    sample_image_paths,
    sample_images,
    tiny_weights,
)
from cascadekit.codec.errors import WeightsError

FAST = ["--size", "64", "--encoder-resolution", "32", "--steps", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    src = tiny_weights_dir(tmp_path_factory)
    dst = tmp_path_factory.mktemp("cli_weights")
    for f in src.iterdir():
        if f.name != "empty_caption.safetensors":
            (dst / f.name).symlink_to(f)
    return dst


def _png(path, size, color):
    Image.new("RGB", size, color).save(path)
    return path


def test_reconstruct_writes_pngs_grid_and_json(weights, tmp_path):
    a = _png(tmp_path / "red.png", (128, 64), (200, 30, 30))
    b = _png(tmp_path / "blue photo.png", (64, 100), (20, 40, 220))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["reconstruct", str(a), str(b), "--out", str(out), "--weights", str(weights),
                                    "--seed", "3", *FAST])
    assert res.exit_code == 0, res.output
    assert "TINY RANDOM" in res.output  # loud label (stderr is mixed into output by CliRunner)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["000_red_recon.png", "001_blue_photo_recon.png", "grid.png", "reconstruct.json"]
    r0 = Image.open(out / "000_red_recon.png")
    assert r0.mode == "RGB" and r0.size == (128, 64)  # short side 64; sides are multiples of 64: kept
    assert Image.open(out / "001_blue_photo_recon.png").size == (64, 64)  # 64x100 -> centre crop to 64x64
    grid = Image.open(out / "grid.png")
    assert grid.size[0] > 128 + 128 and grid.size[1] > 64 + 64
    meta = json.loads((out / "reconstruct.json").read_text())
    assert meta["tiny_random_weights"] is True and meta["warning"]
    assert meta["parameters"]["steps"] == 1 and meta["parameters"]["seed"] == 3
    assert {k: meta["parameters"][k] for k in ("sampler", "cfg_rho", "shift")} == {"sampler": "ddpm", "cfg_rho": 0.7,
                                                                                "shift": 1.0}
    assert meta["codec"]["checkpoints"]["stage_b"]["sha256"]
    assert [i["reconstruction"] for i in meta["images"]] == ["000_red_recon.png", "001_blue_photo_recon.png"]
    assert all(np.isfinite(i["psnr_db"]) for i in meta["images"])
    # same seed -> same bytes
    out2 = tmp_path / "out2"
    res2 = CliRunner().invoke(main, ["reconstruct", str(a), "--out", str(out2), "--weights", str(weights),
                                     "--seed", "3", *FAST])
    assert res2.exit_code == 0, res2.output
    assert np.array_equal(np.asarray(Image.open(out2 / "000_red_recon.png")), np.asarray(r0))


def test_reconstruct_bad_image_is_a_clear_error(weights, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    res = CliRunner().invoke(main, ["reconstruct", str(bad), "--out", str(tmp_path / "o"), "--weights", str(weights),
                                    *FAST])
    assert res.exit_code == 2
    assert "broken.png" in res.output and "not_an_image" in res.output


def test_reconstruct_defaults_to_tiny_weights_and_sample_photos(tmp_path, monkeypatch, weights):
    # no --weights, nothing in the default locations: the tiny set is written to the cache, loudly labelled
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    import cascadekit.codec.defaults as defaults

    monkeypatch.setattr(defaults, "sample_image_paths", lambda: sample_image_paths(("astronaut.png",)))  # one, for speed
    res = CliRunner().invoke(main, ["reconstruct", "--out", str(tmp_path / "o"), *FAST])
    assert res.exit_code == 0, res.output
    assert "NO OFFICIAL WEIGHTS FOUND" in res.output and "MEANINGLESS" in res.output
    tiny = tmp_path / "cache" / "tiny-random-weights"
    assert (tiny / "cascadekit.json").is_file()
    meta = json.loads((tmp_path / "o" / "reconstruct.json").read_text())
    assert meta["images"][0]["input"].endswith("astronaut.png") and meta["tiny_random_weights"]
    assert (tmp_path / "o" / "000_astronaut_recon.png").is_file()
    # the cached set is reused, not rewritten, and no temporary folders are left behind
    stamp = (tiny / "stage_b_lite.safetensors").stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tiny_weights() == tiny
    assert (tiny / "stage_b_lite.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny-random-weights"]


def test_default_weights_resolution(tmp_path, monkeypatch, weights):
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    # a folder with weights at <cache>/weights is used (here: the tiny set, reported as tiny)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "weights").symlink_to(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen = default_weights()
    assert chosen.source == tmp_path / "cache" / "weights" and chosen.tiny
    assert str(chosen) == str(tmp_path / "cache" / "weights")  # path-like: usable as a source directly
    # an explicit $CASCADEKIT_WEIGHTS that holds nothing usable is an error, not a silent fallback
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(ENV_WEIGHTS, str(empty))
    with pytest.raises(WeightsError, match="CASCADEKIT_WEIGHTS"):
        default_weights()


def test_sample_images_are_local_photos():
    paths = sample_image_paths()
    assert [p.name for p in paths][:2] == ["astronaut.png", "coffee.png"] and all(p.is_file() for p in paths)
    name, img = sample_images(("chelsea.png",))[0]
    assert name == "chelsea" and img.mode == "RGB" and min(img.size) >= 256
