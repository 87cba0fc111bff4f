"""`cascadekit evaluate` end to end with the tiny random codec weights and locally created metric backbones."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_weights import tiny_weights_dir  # noqa: E402
from metrics_weights import backbone_dir, empty_torch_home  # noqa: E402,F401  (fixtures)

from cascadekit.cli.main import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    Image.fromarray(rng.integers(0, 256, (72, 96), dtype=np.uint8)).save(d / "gray.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return d


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_evaluate_encode_mode_and_store_mode(tiny, corpus, backbone_dir, tmp_path):  # noqa: F811
    rep = tmp_path / "rep"
    r = invoke(["evaluate", corpus, "--out", rep, "--weights", tiny, "--size", 64, "--encoder-resolution", 64,
                "--steps", 1, "--seed", 5, "--metrics", "psnr,ssim,lpips", "--weights-dir", backbone_dir,
                "--grid-samples", 2, "--quiet"])
    assert r.exit_code == 0, r.output
    assert "PSNR" in r.output and "LPIPS" in r.output and "broken" in r.output
    data = json.loads((rep / "metrics.json").read_text())
    assert data["n_images"] == 4 and data["settings"]["seed"] == 5 and data["settings"]["steps"] == 1
    assert "TINY RANDOM" in data["notice"] and "TINY RANDOM" in (rep / "index.html").read_text()
    assert [s["key"] for s in data["skipped"]] == ["broken"]
    assert data["converted"] == [{"key": "gray", "note": "converted from L to RGB"}]
    assert data["settings"]["codec"]["tiny_random_weights"] is True
    assert len(list((rep / "grids").glob("*.png"))) == 2 and (rep / "per_image.csv").is_file()

    # store mode: latents read from a store built by `cascadekit encode`, originals from its sources
    store = tmp_path / "s.zarr"
    r = invoke(["encode", corpus, "--out", store, "--weights", tiny, "--resolution", 64, "--num-workers", 0,
                "--batch-size", 4, "--chunk-rows", 4, "--no-preview", "--quiet"])
    assert r.exit_code == 0, r.output
    r = invoke(["evaluate", "--store", store, "--out", tmp_path / "rep_s", "--weights", tiny, "--steps", 1,
                "--metrics", "psnr,ssim", "--quiet"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "rep_s" / "metrics.json").read_text())
    assert s["n_images"] == 4 and s["settings"]["mode"] == "store"
    assert any(x["key"] == "broken" and "store was built" in x["reason"] for x in s["skipped"])
    # with IMAGES, keys are matched against the store; a key the store lacks is listed
    extra = tmp_path / "extra.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(extra)
    r = invoke(["evaluate", corpus / "im0.png", extra, "--store", store, "--out", tmp_path / "rep_k",
                "--weights", tiny, "--steps", 1, "--metrics", "psnr", "--quiet"])
    assert r.exit_code == 0, r.output
    k = json.loads((tmp_path / "rep_k" / "metrics.json").read_text())
    assert k["n_images"] == 1
    reasons = {x["key"]: x["reason"] for x in k["skipped"]}
    assert "no latent" in reasons["extra"] and "not among IMAGES" in reasons["im1"]


def test_evaluate_errors_are_explained(tiny, corpus, tmp_path, empty_torch_home):  # noqa: F811
    r = invoke(["evaluate", corpus, "--out", tmp_path / "r", "--weights", tiny, "--metrics", "psnr,mse"])
    assert r.exit_code == 2 and "unknown metric" in r.output
    r = invoke(["evaluate", corpus, "--out", tmp_path / "r", "--weights", tiny, "--size", 64,
                "--encoder-resolution", 64, "--metrics", "lpips", "--quiet"])
    assert r.exit_code == 2 and "alexnet-owt-7be5be79.pth" in r.output and "--weights-dir" in r.output
