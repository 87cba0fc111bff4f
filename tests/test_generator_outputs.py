"""`cascadekit sample` outputs: PNGs with metadata + a labelled grid.png + samples.json."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from _tiny_weights import tiny_weights_dir
from click.testing import CliRunner
from PIL import Image

from cascadekit.codec.errors import InputError
from cascadekit.generator.outputs import write_samples
from cascadekit.generator.pipeline import read_png_parameters


def _params(prompts, seed=5, n=1):
    return [{"prompt": p, "negative_prompt": "", "seed": seed, "index": i, "height": 8, "width": 12}
            for i, p in enumerate(q for q in prompts for _ in range(n))]


def test_write_samples_grid_layout_and_record(tmp_path):
    # two prompts x two images each: colours make every cell identifiable in the grid
    colours = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0)]
    imgs = torch.stack([torch.tensor(c, dtype=torch.float32)[:, None, None].expand(3, 8, 12) for c in colours])
    params = _params(["a red fox", "a cat"], n=2)
    files = write_samples(imgs, params, tmp_path / "o")
    assert [p.name for p in files.images] == [f"image_5_{i:03d}.png" for i in range(4)]
    doc = json.loads(files.manifest.read_text())
    assert doc["count"] == 4 and doc["grid"] == "grid.png"
    assert [s["file"] for s in doc["samples"]] == [p.name for p in files.images]
    assert [s["prompt"] for s in doc["samples"]] == ["a red fox", "a red fox", "a cat", "a cat"]
    assert all((tmp_path / "o" / s["file"]).is_file() for s in doc["samples"])
    with Image.open(files.grid) as g:
        grid = g.convert("RGB")
    W, H = grid.size
    assert W >= 2 * 12 and H >= 2 * 8 + 14  # 2 columns x 2 rows + label line
    # column 1 = "a red fox" (red above green), column 2 = "a cat" (blue above yellow)
    px = {grid.getpixel((x, y)) for y in range(H) for x in range(W)}
    assert {(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)} <= px
    red = [(x, y) for y in range(H) for x in range(W) if grid.getpixel((x, y)) == (255, 0, 0)]
    green = [(x, y) for y in range(H) for x in range(W) if grid.getpixel((x, y)) == (0, 255, 0)]
    blue = [(x, y) for y in range(H) for x in range(W) if grid.getpixel((x, y)) == (0, 0, 255)]
    assert min(y for _, y in green) > max(y for _, y in red)  # same column, next row
    assert min(x for x, _ in blue) > max(x for x, _ in red)  # next column
    assert not list(tmp_path.glob("o/*.tmp*"))


def test_write_samples_rejects_mismatch_and_latents_only(tmp_path):
    with pytest.raises(InputError, match="3 images for 2"):
        write_samples(torch.rand(3, 3, 8, 8), _params(["a", "b"]), tmp_path)
    with pytest.raises(InputError, match="latents-only"):
        write_samples(torch.zeros(2, 3, 0, 0), _params(["a", "b"]), tmp_path)


def test_sample_command_writes_grid_and_json(tmp_path_factory, tmp_path):
    from cascadekit.cli.main import main

    weights = tiny_weights_dir(tmp_path_factory)
    out = tmp_path / "o"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = CliRunner().invoke(main, ["sample", "a fox", "a cat", "--weights", str(weights), "--out", str(out),
                                      "--negative", "blurry", "--steps", "2", "--decoder-steps", "1",
                                      "--height", "64", "--width", "96", "--seed", "4", "--n", "2",
                                      "--guidance", "3.5", "--shift", "1.5"])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "samples.json").read_text())
    assert doc["count"] == 4 and (out / "grid.png").is_file()
    for s in doc["samples"]:
        png = read_png_parameters(out / s["file"])
        assert png["prompt"] == s["prompt"] and png["seed"] == s["seed"] == 4
        assert s["negative_prompt"] == "blurry" and (s["height"], s["width"]) == (64, 96)
        assert s["prior_steps"] == 2 and s["decoder_steps"] == 1
        assert s["prior_guidance"] == 3.5 and s["prior_shift"] == 1.5
        assert s["tiny_weights"] is True and s["stage_c_weights"].endswith(".safetensors")
        assert s["weights"].startswith("TINY RANDOM WEIGHTS")
    assert [s["prompt"] for s in doc["samples"]] == ["a fox", "a fox", "a cat", "a cat"]
    with Image.open(out / "grid.png") as g:
        assert g.size[0] >= 2 * 96 and g.size[1] >= 2 * 64
    assert "grid.png" in r.output
