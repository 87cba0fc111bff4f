"""The output-folder convention (cli/out_folder.py) end to end, and the long-prompt warning: an earlier run's
outputs are refused without --overwrite and removed with it, so the record file describes every file."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from _tiny_weights import tiny_weights_dir
from click.testing import CliRunner
from PIL import Image

from cascadekit.cli.main import main
from cascadekit.cli.out_folder import EVALUATE, SAMPLE, check_out_folder, claim_out_folder
from cascadekit.codec.errors import OutputError

SAMPLE_FAST = ["--steps", "1", "--decoder-steps", "1", "--height", "32", "--width", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


def invoke(args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(main, [str(a) for a in args])


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def described(folder: Path, record: str) -> set[str]:
    doc = json.loads((folder / record).read_text())
    return {record, doc["grid"], *(s["file"] for s in doc["samples"])}


def test_sample_refuses_an_earlier_run_and_overwrite_replaces_it(weights, tmp_path):
    out = tmp_path / "o"
    r = invoke(["sample", "a fox", "--weights", weights, "--out", out, "--seed", 1, "--n", 2, *SAMPLE_FAST])
    assert r.exit_code == 0, r.output
    first = {f: (out / f).read_bytes() for f in files_in(out)}
    assert set(first) == described(out, "samples.json") and len(first) == 4

    r = invoke(["sample", "a cat", "--weights", weights, "--out", out, "--seed", 2, *SAMPLE_FAST])
    assert r.exit_code == 2 and "--overwrite" in r.output and "earlier" in r.output
    assert {f: (out / f).read_bytes() for f in files_in(out)} == first  # untouched

    r = invoke(["sample", "a cat", "--weights", weights, "--out", out, "--seed", 2, "--overwrite", *SAMPLE_FAST])
    assert r.exit_code == 0, r.output
    now = files_in(out)
    assert now == described(out, "samples.json") == {"samples.json", "grid.png", "image_2_000.png"}
    assert json.loads((out / "samples.json").read_text())["samples"][0]["prompt"] == "a cat"


def test_foreign_files_are_never_touched(weights, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"mine")
    r = invoke(["sample", "a fox", "--weights", weights, "--out", out, "--overwrite", *SAMPLE_FAST])
    assert r.exit_code == 2 and "holiday.png" in r.output and "not outputs of" in r.output
    assert files_in(out) == {"holiday.png"} and (out / "holiday.png").read_bytes() == b"mine"


def test_a_long_prompt_warns_how_many_tokens_are_dropped(weights, tmp_path):
    long = " ".join(["fox"] * 2000)
    r = invoke(["sample", long, "--weights", weights, "--out", tmp_path / "o", "--seed", 0, *SAMPLE_FAST])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("warning: PROMPT"))
    reads = int(line.split("the text encoder reads ")[1].split(",")[0])
    has = int(line.split(" has ")[1].split(" tokens")[0])
    assert has >= 2000 and f"the last {has - reads} tokens are dropped" in line
    r = invoke(["sample", "a short prompt", "--weights", weights, "--out", tmp_path / "o2", "--seed", 0, *SAMPLE_FAST])
    assert r.exit_code == 0 and "tokens are dropped" not in r.output


def test_evaluate_overwrite_leaves_no_stale_grids(weights, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(imgs / f"im{i}.png")
    rep = tmp_path / "rep"
    base = ["--out", rep, "--weights", weights, "--size", 64, "--encoder-resolution", 64, "--steps", 1,
            "--metrics", "psnr", "--quiet", "--device", "cpu"]
    r = invoke(["evaluate", imgs, *base, "--grid-samples", 3])
    assert r.exit_code == 0, r.output
    assert len(list((rep / "grids").glob("*.png"))) == 3
    r = invoke(["evaluate", imgs / "im1.png", *base])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = invoke(["evaluate", imgs / "im1.png", *base, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in (rep / "grids").iterdir()] == ["0000_im1.png"]
    assert json.loads((rep / "metrics.json").read_text())["n_images"] == 1
    assert files_in(rep) == {"metrics.json", "per_image.csv", "index.html", "grids/0000_im1.png"}


def test_out_folder_rules(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        claim_out_folder(tmp_path / "f", SAMPLE, overwrite=True)
    with pytest.raises(OutputError, match="a parent of"):
        claim_out_folder(tmp_path / "f" / "sub", SAMPLE, overwrite=True)
    run = tmp_path / "run"
    (run / "grids").mkdir(parents=True)
    (run / "plots").mkdir()
    for f in ("metrics.json", "index.html", "grids/0000_a.png", "plots/hist_psnr.png", ".metrics.json.x1.tmp"):
        (run / f).write_text("old")
    with pytest.raises(OutputError, match="earlier `cascadekit evaluate` run"):
        check_out_folder(run, EVALUATE, overwrite=False)
    with pytest.raises(OutputError, match="not outputs of `cascadekit sample`"):  # another command's report
        check_out_folder(run, SAMPLE, overwrite=True)
    assert len(check_out_folder(run, EVALUATE, overwrite=True)) == 5 and (run / "metrics.json").exists()
    claim_out_folder(run, EVALUATE, overwrite=True)
    assert list(run.iterdir()) == []  # outputs and the emptied grids/, plots/ removed, the folder kept
