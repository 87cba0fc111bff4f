"""`reconstruct --size` on an elongated image: the resized output is checked against the pixel budget before
anything is resized or decoded (the short side grows to --size, the long side with it)."""
from __future__ import annotations

import pytest
from _tiny_weights import tiny_weights_dir
from click.testing import CliRunner
from PIL import Image

from cascadekit.cli.main import main
from cascadekit.cli.params import MAX_PIXELS
from cascadekit.codec.errors import InputError
from cascadekit.codec.reconstruct_files import prepare_image, short_side_size


def test_short_side_size_matches_the_resize():
    assert short_side_size(16, 4000, 1024) == (1024, 256000)
    assert short_side_size(300, 100, 50) == (150, 50)
    assert short_side_size(64, 64, None) == (64, 64)
    img = Image.new("RGB", (30, 71))
    assert tuple(prepare_image_size(img, 40)) == short_side_size(30, 71, 40)


def prepare_image_size(img, size):
    from cascadekit.codec.images import resize_short_side

    return resize_short_side(img, size).size


def test_prepare_image_refuses_an_output_above_the_budget(tmp_path):
    p = tmp_path / "strip.png"
    Image.new("RGB", (16, 4000), (10, 20, 30)).save(p)
    with pytest.raises(InputError, match=r"strip\.png: a 16x4000 image .* \(--size\) is 1024x256000 = 262144000 pixels, "
                                         r"above the budget of 16777216"):
        prepare_image(p, 1024, max_pixels=MAX_PIXELS)
    assert prepare_image(p, 64, max_pixels=MAX_PIXELS).shape == (3, 16000, 64)  # within: unchanged behaviour


def test_cli_reconstruct_elongated_image_is_refused_before_decoding(tmp_path_factory, tmp_path):
    weights = tiny_weights_dir(tmp_path_factory)
    p = tmp_path / "strip.png"
    Image.new("RGB", (16, 4000), (10, 20, 30)).save(p)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["reconstruct", str(p), "--out", str(out), "--weights", str(weights), "--size", "1024",
                                  "--device", "cpu"], catch_exceptions=False)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].startswith("error: ") and "--size" in r.output and "budget" in r.output
    assert not out.exists() or not any(out.glob("*.png"))
