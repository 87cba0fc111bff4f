"""The last direct opens of user paths go through the regular-file / byte-cap guard: a FIFO is refused without
being opened (no hang), a regular file still reads (PNG parameters, evaluate's mode note, FID statistics)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cascadekit.cli.evaluate import _mode_note
from cascadekit.codec.errors import InputError
from cascadekit.generator.pipeline import read_png_parameters
from cascadekit.metrics.errors import MetricInputError
from cascadekit.metrics.fid import load_stats


@pytest.fixture
def fifo(tmp_path):
    p = tmp_path / "x.png"
    os.mkfifo(p)
    return p


def test_png_parameters(tmp_path, fifo):
    info = PngInfo()
    info.add_text("parameters", '{"seed": 3}')
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", pnginfo=info)
    assert read_png_parameters(tmp_path / "a.png") == {"seed": 3}
    with pytest.raises(InputError, match="not a regular file|FIFO"):
        read_png_parameters(fifo)


def test_mode_note(tmp_path, fifo):
    Image.new("L", (8, 8)).save(tmp_path / "g.png")
    assert _mode_note(tmp_path / "g.png") == "converted from L to RGB"
    assert _mode_note(fifo) is None  # never blocks; the loader reports the file


def test_fid_stats(tmp_path, fifo):
    np.savez(tmp_path / "s.npz", mu=np.zeros(3), sigma=np.eye(3), n=np.int64(5))
    mu, sigma, n = load_stats(tmp_path / "s.npz")
    assert mu.shape == (3,) and sigma.shape == (3, 3) and n == 5
    with pytest.raises(MetricInputError, match="not a regular file"):
        load_stats(fifo)
    np.savez(tmp_path / "p.npz", mu=np.array([object()], dtype=object), sigma=np.eye(1))
    with pytest.raises(MetricInputError, match="cannot read FID statistics"):
        load_stats(tmp_path / "p.npz")  # an object array would need pickle: refused
