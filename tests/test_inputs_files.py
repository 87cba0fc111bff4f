"""Inputs are read as regular files only, with a byte cap, and never block: FIFOs, devices, sockets,
symlinks to devices and oversize files become skipped rows with a reason (or a clear error), in every
reader (codec loader, corpus folders, manifests, tar shards, metrics folder scans)."""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import TinyEncoder, make_tar, photos, png_bytes  # noqa: E402

from cascadekit.codec.errors import InputError
from cascadekit.codec.images import ImageInputError, load_image
from cascadekit.codec.input_files import InputFileError, check_regular, read_regular
from cascadekit.datasets import store as S
from cascadekit.datasets.builder import build_latent_dataset
from cascadekit.datasets.sources import SampleReader, plan_inputs
from cascadekit.metrics.errors import MetricInputError
from cascadekit.metrics.images import iter_folder, read_image

pytestmark = pytest.mark.timeout(60)  # a regression here would hang on a FIFO: fail instead
posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and /dev/zero")

PNG = png_bytes(photos()[0][1][::8, ::8])  # 64x64


def _reason(fn, *a, **kw) -> str:
    with pytest.raises(InputError) as e:
        fn(*a, **kw)
    return e.value.reason


@posix_only
def test_read_regular_refuses_fifo_device_socket_and_symlinked_device(tmp_path):
    os.mkfifo(tmp_path / "x.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "ok.png").write_bytes(PNG)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s.png"))
        for name, kind in (("x.png", "FIFO"), ("zero.png", "character device"), ("s.png", "socket")):
            with pytest.raises(InputFileError, match=kind) as e:
                read_regular(tmp_path / name)
            assert e.value.reason == "not_a_file"
    assert "symlink to /dev/zero" in str(pytest.raises(InputFileError, read_regular, tmp_path / "zero.png").value)
    assert _reason(read_regular, "/dev/zero") == "not_a_file"
    assert _reason(read_regular, tmp_path / "missing.png") == "unreadable"
    assert read_regular(tmp_path / "ok.png") == PNG and check_regular(tmp_path / "ok.png").st_size == len(PNG)


def test_byte_cap(tmp_path):
    (tmp_path / "ok.png").write_bytes(PNG)
    with pytest.raises(InputFileError, match="above the input cap") as e:
        read_regular(tmp_path / "ok.png", max_bytes=len(PNG) - 1)
    assert e.value.reason == "too_large" and "--max-input-bytes" in str(e.value)
    assert read_regular(tmp_path / "ok.png", max_bytes=len(PNG)) == PNG
    # the image loader: paths and file objects alike
    assert _reason(load_image, tmp_path / "ok.png", max_bytes=100) == "too_large"
    with open(tmp_path / "ok.png", "rb") as f:
        assert _reason(load_image, f, max_bytes=100) == "too_large"
    assert load_image(tmp_path / "ok.png", max_bytes=len(PNG)).size == (64, 64)
    with pytest.raises(MetricInputError, match="above the input cap"):
        read_image(tmp_path / "ok.png", max_bytes=100)


@posix_only
def test_image_loaders_never_open_a_fifo_or_read_dev_zero(tmp_path):
    os.mkfifo(tmp_path / "x.png")
    with pytest.raises(ImageInputError, match="FIFO") as e:
        load_image(tmp_path / "x.png")
    assert e.value.reason == "not_a_file"
    assert _reason(load_image, "/dev/zero") == "not_a_file"
    for p in (tmp_path / "x.png", "/dev/zero"):
        with pytest.raises(MetricInputError, match="not a regular file"):
            read_image(p)


@posix_only
def test_metrics_folder_scan_lists_fifos_so_they_are_skipped_with_a_reason(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG)
    os.mkfifo(tmp_path / "x.png")
    assert [k for k, _ in iter_folder(tmp_path)] == ["a", "x"]


@posix_only
def test_build_skips_fifo_device_link_devzero_manifest_and_oversize_with_reasons(tmp_path):
    c = tmp_path / "c"
    c.mkdir()
    (c / "good.png").write_bytes(PNG)
    (c / "good.txt").write_text("a caption")
    os.mkfifo(c / "fifo.png")
    (c / "zero.jpg").symlink_to("/dev/zero")
    big = png_bytes(photos()[1][1])  # a few hundred KB
    (c / "big.png").write_bytes(big)
    os.mkfifo(c / "capfifo.txt")  # a FIFO caption sidecar: read as no caption, never opened
    (c / "capfifo.png").write_bytes(PNG)
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"path": "/dev/zero", "key": "devzero"}) + "\n"
                   + json.dumps({"path": str(c / "fifo.png"), "key": "mfifo"}) + "\n")
    out = tmp_path / "s.zarr"
    build_latent_dataset([c, man], out, TinyEncoder(), resolution=64, batch_size=4, chunk_rows=4, num_workers=1,
                         progress=False, max_input_bytes=len(big) - 1)
    g = S.open_store(out)
    keys = [str(k) for k in np.asarray(g["keys"][:])]
    reasons = dict(zip(keys, (str(r) for r in np.asarray(g["skip_reason"][:]))))
    assert reasons == {"big": "too_large", "capfifo": "", "fifo": "not_a_file", "good": "", "zero": "not_a_file",
                       "devzero": "not_a_file", "mfifo": "not_a_file"}
    caps = dict(zip(keys, (str(x) for x in np.asarray(g["captions"][:]))))
    assert caps["good"] == "a caption" and caps["capfifo"] == ""
    assert g.attrs["preprocess"]["max_input_bytes"] == len(big) - 1  # recorded: it is not the default


def test_tar_members_are_capped_by_size(tmp_path):
    make_tar(tmp_path / "t.tar", [("small", {"png": PNG, "txt": b"small caption"}),
                                  ("large", {"png": PNG + b"\0" * 5000, "txt": b"x" * 6000}),
                                  ("after", {"png": PNG})])
    plan = plan_inputs([tmp_path / "t.tar"])
    r = SampleReader(max_bytes=len(PNG) + 100)
    assert r.fetch(plan[0]) == (PNG, "small caption")
    with pytest.raises(InputFileError, match="member large.png") as e:
        r.fetch(plan[1])
    assert e.value.reason == "too_large"
    assert r.fetch(plan[2]) == (PNG, None)  # the stream went on past the skipped member
    r.close()


@posix_only
def test_a_fifo_given_as_input_or_shard_is_a_clear_error(tmp_path):
    os.mkfifo(tmp_path / "shard.tar")
    with pytest.raises(InputError, match="FIFO"):
        plan_inputs([tmp_path / "shard.tar"])
    os.mkfifo(tmp_path / "one.png")
    with pytest.raises(InputError, match="FIFO"):
        plan_inputs([tmp_path / "one.png"])
