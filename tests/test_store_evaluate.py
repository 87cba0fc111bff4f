"""`cascadekit evaluate --store` on a store with a lost chunk: its rows are listed as skipped (never decoded
from zeros); a damaged chunk stops the run with a clear error, exit 2, no traceback."""
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
from store_helpers import chunk_file, flip_byte  # noqa: E402

from cascadekit.cli.main import main


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*TINY RANDOM")
def test_evaluate_store_skips_lost_rows_and_refuses_damaged_ones(tmp_path_factory, tmp_path):
    tiny = tiny_weights_dir(tmp_path_factory)
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src / f"im{i}.png")
    store = tmp_path / "s.zarr"
    r = invoke(["encode", src, "--out", store, "--weights", tiny, "--resolution", 64, "--num-workers", 0,
                "--batch-size", 2, "--chunk-rows", 2, "--no-preview", "--quiet"])
    assert r.exit_code == 0, r.output
    chunk_file(store, "latents", 1).unlink()  # im2, im3
    r = invoke(["evaluate", "--store", store, "--out", tmp_path / "rep", "--weights", tiny, "--steps", 1,
                "--metrics", "psnr", "--quiet"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert rep["n_images"] == 4
    lost = {x["key"]: x["reason"] for x in rep["skipped"] if "missing" in x["reason"]}
    assert sorted(lost) == ["im2", "im3"] and "inspect --verify" in lost["im2"]

    flip_byte(chunk_file(store, "latents", 2))  # im4, im5
    r = invoke(["evaluate", "--store", store, "--out", tmp_path / "rep2", "--weights", tiny, "--steps", 1,
                "--metrics", "psnr", "--quiet"])
    assert r.exit_code == 2 and "error:" in r.output and "latents: chunk 2 (rows 4..5) is damaged" in r.output
    assert "Traceback" not in r.output
