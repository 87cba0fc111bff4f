"""A run never reads its own output (``--out`` inside an input folder), and stores record absolute
sources, so ``evaluate --store`` works from any working directory."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_weights import tiny_weights_dir  # noqa: E402

from cascadekit.cli.main import main
from cascadekit.codec.errors import InputError
from cascadekit.datasets import store as S
from cascadekit.datasets.sources import plan_inputs
from cascadekit.metrics.images import iter_folder

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore:.*TINY RANDOM")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture
def imgs(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    return d


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _encode(inputs, out, tiny, *extra):
    return invoke(["encode", *inputs, "--out", out, "--weights", tiny, "--resolution", 64, "--num-workers", 0,
                   "--batch-size", 4, "--chunk-rows", 4, "--quiet", *extra])


def test_plan_never_enters_the_output_and_refuses_inputs_inside_it(imgs):
    out = imgs / "s.zarr"
    (out / "inspect").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(out / "inspect" / "preview.png")
    keys = [s.key for s in plan_inputs([imgs], exclude=[out])]
    assert keys == ["im0", "im1", "im2"]
    assert "s.zarr/inspect/preview" in [s.key for s in plan_inputs([imgs])]  # only excluded when it is the output
    with pytest.raises(InputError, match="inside the output folder"):
        plan_inputs([out / "inspect"], exclude=[out])
    with pytest.raises(InputError, match="inside the output folder"):
        plan_inputs([out / "inspect" / "preview.png"], exclude=[out])
    assert [k for k, _ in iter_folder(imgs, exclude=[out])] == ["im0", "im1", "im2"]


def test_encode_rerun_and_overwrite_with_out_inside_the_input(tiny, imgs):
    out = imgs / "s.zarr"
    for extra in ((), (), ("--overwrite",)):  # first run writes inspect/preview.png into the store
        r = _encode([imgs], out, tiny, *extra)
        assert r.exit_code == 0, r.output
        assert "rows             3 in 1 group(s)" in r.output and (out / "inspect" / "preview.png").is_file()
        assert [str(k) for k in np.asarray(S.open_store(out)["keys"][:])] == ["im0", "im1", "im2"]


def test_evaluate_twice_with_out_inside_the_input(tiny, imgs):
    rep = imgs / "rep"
    for extra in ((), ("--overwrite",)):
        r = invoke(["evaluate", imgs, "--out", rep, "--weights", tiny, "--size", 64, "--encoder-resolution", 64,
                    "--steps", 1, "--metrics", "psnr,ssim", "--grid-samples", 3, "--quiet", *extra])
        assert r.exit_code == 0, r.output
        data = json.loads((rep / "metrics.json").read_text())
        assert data["n_images"] == 3 and data["skipped"] == []
        assert len(list((rep / "grids").glob("*.png"))) == 3


def test_evaluate_store_from_another_working_directory(tiny, imgs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = _encode(["imgs"], "s.zarr", tiny, "--no-preview")  # relative input, relative --out
    assert r.exit_code == 0, r.output
    src = [str(s) for s in np.asarray(S.open_store(tmp_path / "s.zarr")["source"][:])]
    assert src == [str(imgs / f"im{i}.png") for i in range(3)]  # absolute
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = invoke(["evaluate", "--store", "../s.zarr", "--out", "rep", "--weights", tiny, "--steps", 1,
                "--metrics", "psnr", "--quiet"])
    assert r.exit_code == 0, r.output
    data = json.loads((elsewhere / "rep" / "metrics.json").read_text())
    assert data["n_images"] == 3 and data["skipped"] == []


def test_stores_with_relative_sources_still_resolve_against_the_working_directory(tiny, imgs, tmp_path,
                                                                                  monkeypatch):
    """Stores written before sources were absolute hold paths relative to their encode's working directory;
    evaluate --store resolves those against its own working directory (the rule documented in
    docs/dataset_format.md)."""
    r = _encode([imgs], tmp_path / "s.zarr", tiny, "--no-preview")
    assert r.exit_code == 0, r.output
    arr = S.open_store(tmp_path / "s.zarr", mode="r+")["source"]
    arr[:] = np.asarray([f"imgs/im{i}.png" for i in range(3)], dtype=arr.dtype)  # as an older encode wrote them
    monkeypatch.chdir(tmp_path)
    r = invoke(["evaluate", "--store", "s.zarr", "--out", "rep", "--weights", tiny, "--steps", 1,
                "--metrics", "psnr", "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["n_images"] == 3


def test_encode_max_input_bytes_flag(tiny, imgs, tmp_path):
    r = _encode([imgs], tmp_path / "s.zarr", tiny, "--no-preview", "--max-input-bytes", 100)
    assert r.exit_code == 0 and "too_large           3" in r.output, r.output
    reasons = [str(x) for x in np.asarray(S.open_store(tmp_path / "s.zarr")["skip_reason"][:])]
    assert reasons == ["too_large"] * 3
    assert S.open_store(tmp_path / "s.zarr").attrs["preprocess"]["max_input_bytes"] == 100
