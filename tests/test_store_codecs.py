"""The codec of each new array (``store.compressors_for``: floats blosc lz4 + bitshuffle, others zstd-3, crc32c last),
and stores written before it (zstd-3 everywhere): they still read, resume bit-identically and verify."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from zarr.codecs import Crc32cCodec, ZstdCodec

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import TinyEncoder, store_arrays  # noqa: E402
from store_helpers import N, FakeText, build, chunk_file, flip_byte, full_store  # noqa: E402

from cascadekit.cli.main import main
from cascadekit.datasets import store as S
from cascadekit.datasets.reader import LatentDataset
from cascadekit.datasets.text_embeddings import add_text_embeddings
from cascadekit.datasets.verify import verify_store


def _old_policy(dtype):
    """What cascadekit wrote before floats got blosc: zstd level 3 + crc32c for every array."""
    return (ZstdCodec(level=3), Crc32cCodec())


def _names(arr) -> list[str]:
    return [type(c).__name__ for c in arr.compressors]


class _Cut(BaseException):
    """Stops a build mid-run like a kill (not an Exception: nothing records it as a bad item)."""


class _CutEncoder(TinyEncoder):
    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def encode(self, x):
        if self.calls >= self.after:
            raise _Cut()
        return super().encode(x)


def _batches(path) -> dict:
    ds = LatentDataset(path, batch_size=5, shuffle=False, fields=("latents", "stage_a", "clip_text"), in_memory=False)
    return {int(r): (b["latents"][i].numpy(), b["stage_a"][i].numpy(), b["clip_text"][i].numpy())
            for b in ds for i, r in enumerate(b["rows"])}


@pytest.mark.parametrize("dtype", ["float16", "float32", np.float64])
def test_float_arrays_get_blosc_lz4_bitshuffle_then_crc32c(dtype):
    blosc, crc = S.compressors_for(dtype)
    assert type(blosc).__name__ == "BloscCodec" and type(crc).__name__ == "Crc32cCodec"
    assert (blosc.cname.value, blosc.clevel, blosc.shuffle.value) == ("lz4", 5, "bitshuffle")
    assert blosc.typesize == np.dtype(dtype).itemsize


@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64", "bool", str])
def test_other_arrays_get_zstd3_then_crc32c(dtype):
    zstd, crc = S.compressors_for(dtype)
    assert type(zstd).__name__ == "ZstdCodec" and zstd.level == 3 and type(crc).__name__ == "Crc32cCodec"


def test_zstd_store_reads_resumes_and_verifies(tmp_path, monkeypatch):
    ref = full_store(tmp_path / "new.zarr")  # the current policy, uninterrupted
    assert _names(S.open_store(ref)["stage_a"]) == ["BloscCodec", "Crc32cCodec"]
    old = tmp_path / "old.zarr"
    with monkeypatch.context() as m:  # a build by the old policy, cut off after 4 of 8 batches
        m.setattr(S, "compressors_for", _old_policy)
        with pytest.raises(_Cut):
            build(old, encoder=_CutEncoder(after=5))  # the first call is the builder's probe
    done = int((S.read_status(S.open_store(old)) != 0).sum())
    assert 0 < done < N
    res = build(old)  # resumed by this code: the arrays keep their zstd chunks
    assert res.resumed_rows == done
    root = S.open_store(old)
    for name in ("latents", "stage_a", "keys", "status"):
        assert _names(root[name]) == ["ZstdCodec", "Crc32cCodec"], name
    r, o = store_arrays(ref), store_arrays(old)
    assert r.keys() == o.keys() and all(np.array_equal(r[k], o[k]) for k in r)
    add_text_embeddings(old, FakeText(), batch_size=3, progress=False)  # a new array: the current policy
    assert _names(S.open_store(old)["clip_text"]) == ["BloscCodec", "Crc32cCodec"]
    rep = verify_store(old)
    assert rep["ok"] and rep["chunks_checked"] > 0 and rep["problems"] == []
    cli = CliRunner().invoke(main, ["inspect", str(old), "--verify", "--no-preview"], catch_exceptions=False)
    assert cli.exit_code == 0 and "none missing or damaged" in cli.output
    want, got = _batches(ref), _batches(old)
    assert want.keys() == got.keys() and len(got) == N
    assert all(all(np.array_equal(a, b) for a, b in zip(want[k], got[k])) for k in want)
    flip_byte(chunk_file(old, "latents", 1))  # a damaged zstd chunk is still found by its checksum
    bad = verify_store(old)["problems"]
    assert [(p["array"], p["chunk"], p["kind"]) for p in bad] == [("latents", 1, "damaged")]
