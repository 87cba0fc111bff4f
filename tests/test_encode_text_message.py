"""`encode --text-embeddings` says when the captions it embedded were empty (a folder without caption files)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cascadekit.cli.embed_text import captions_phrase
from cascadekit.cli.main import main


def test_captions_phrase():
    assert captions_phrase({"embedded": 8, "empty": 0}) == "8 captions"
    assert captions_phrase({"embedded": 8, "empty": 8}) == "8 empty captions"
    assert captions_phrase({"embedded": 8, "empty": 3}) == "8 captions (3 empty)"
    assert captions_phrase({"embedded": 0, "empty": 0}) == "0 captions"
    assert captions_phrase({"embedded": 8, "empty": 2}, " embedded") == "8 captions embedded (2 empty)"
    assert captions_phrase({"embedded": 8, "empty": 8}, " embedded") == "8 empty captions embedded"


@pytest.mark.filterwarnings("ignore:.*TINY RANDOM")
def test_encode_without_caption_files_says_empty_captions(tmp_path):
    from cascadekit.codec.weights.tiny import write_tiny_weights

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_tiny_weights(tmp_path / "w")
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    r = CliRunner().invoke(main, ["encode", str(tmp_path / "imgs"), "--out", str(tmp_path / "s.zarr"), "--weights",
                                  str(tmp_path / "w"), "--resolution", "64", "--num-workers", "0", "--quiet",
                                  "--no-preview", "--text-embeddings"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "text embeddings: 3 empty captions embedded" in r.output
