"""A deleted, truncated or bit-flipped chunk behind rows marked done is found (inspect --verify), every reader
refuses or skips it with a message (never zeros), and a rerun of encode / embed-text re-creates it."""
from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import store_arrays  # noqa: E402
from store_helpers import (CHUNK, N, FakeText, build, chunk_file, copy, flip_byte, full_store,  # noqa: E402
                           truncate)

from cascadekit.cli.main import main
from cascadekit.codec.errors import InputError
from cascadekit.datasets import store as S
from cascadekit.datasets.access import LatentStore
from cascadekit.datasets.reader import LatentDataset
from cascadekit.datasets.text_embeddings import add_text_embeddings
from cascadekit.datasets.verify import verify_store
from cascadekit.generator.data import open_train_data


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return full_store(tmp_path_factory.mktemp("good") / "s.zarr")


def _inspect_verify(store):
    return CliRunner().invoke(main, ["inspect", str(store), "--verify", "--no-preview"], catch_exceptions=False)


def _rows(ds):
    return sorted(int(r) for b in ds for r in b["rows"])


def test_new_stores_checksum_every_chunked_array(good):
    root = S.open_store(good)
    assert root.attrs["format_version"] == 2
    for name in ("latents", "stage_a", "keys", "captions", "source", "orig_size", "skip_reason", "status",
                 "clip_text", "clip_text_pooled", "text_status"):
        assert any(type(c).__name__ == "Crc32cCodec" for c in root[name].compressors), name
    rep = verify_store(good)
    assert rep["ok"] and rep["chunks_checked"] > 0 and rep["problems"] == []
    r = _inspect_verify(good)
    assert r.exit_code == 0 and "none missing or damaged" in r.output


def test_deleted_latent_chunk_is_found_refused_and_rebuilt(good, tmp_path):
    s = copy(good, tmp_path / "s.zarr")
    chunk_file(s, "latents", 1).unlink()  # rows 4..7

    rep = verify_store(s)
    assert not rep["ok"]
    assert [(p["array"], p["chunk"], p["rows"], p["kind"]) for p in rep["problems"]] == [("latents", 1, [4, 8], "missing")]
    r = _inspect_verify(s)
    assert r.exit_code == 2 and "missing  latents chunk 1 rows 4..7" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["inspect", str(s), "--no-preview"], catch_exceptions=False)
    assert r.exit_code == 0 and "MISSING  1 chunk file(s)" in r.output

    with pytest.warns(UserWarning, match=r"skipping 4 rows with missing chunk files: latents chunk 1 \(rows 4..7\)"):
        ds = LatentDataset(s, batch_size=3, shuffle=False)
    assert _rows(ds) == [r for r in range(N) if not 4 <= r < 8]  # never the zeros of the fill value
    with pytest.raises(InputError, match=r"4 samples of group 'root' have missing chunk files .*latents chunk 1"):
        open_train_data(s)
    where, _, skipped = LatentStore(s).key_index()
    assert sorted(where) == [f"img{i:03d}" for i in range(N) if not 4 <= i < 8]
    assert {d["key"] for d in skipped if "missing" in d["reason"]} == {f"img{i:03d}" for i in range(4, 8)}

    summ = build(s)  # the same command again re-creates the chunk
    assert summ.encoded_now == CHUNK
    assert verify_store(s)["ok"]
    want, got = store_arrays(good), store_arrays(s)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("damage", [flip_byte, truncate])
def test_damaged_latent_chunk_is_an_input_error_and_rebuilt(good, tmp_path, damage):
    s = copy(good, tmp_path / "s.zarr")
    damage(chunk_file(s, "latents", 2))  # rows 8..11

    rep = verify_store(s)
    assert [(p["array"], p["chunk"], p["kind"]) for p in rep["problems"]] == [("latents", 2, "damaged")]
    assert "checksum" in rep["problems"][0]["detail"]
    r = _inspect_verify(s)
    assert r.exit_code == 2 and "damaged  latents chunk 2 rows 8..11" in r.output and "Traceback" not in r.output

    ds = LatentDataset(s, batch_size=4, shuffle=False, in_memory=False)
    with pytest.raises(InputError, match=r"latents: chunk 2 \(rows 8..11\) is damaged .*inspect --verify"):
        _rows(ds)
    data = open_train_data(s)  # presence is fine; the read names the damage
    with pytest.raises(InputError, match=r"chunk 2 \(rows 8..11\) is damaged"):
        data.read("root", [9])
    assert data.read("root", [0])["latents"].shape == (1, 16, 2, 2)

    build(s)  # rerun: the deep check at resume marks the rows pending again
    assert verify_store(s)["ok"]
    np.testing.assert_array_equal(store_arrays(s)["/latents"], store_arrays(good)["/latents"])
    np.testing.assert_array_equal(store_arrays(s)["/stage_a"], store_arrays(good)["/stage_a"])


def test_damaged_stage_a_and_caption_chunks_are_rebuilt(good, tmp_path):
    s = copy(good, tmp_path / "s.zarr")
    chunk_file(s, "stage_a", 0).unlink()
    flip_byte(chunk_file(s, "captions", 3))
    rep = verify_store(s)
    assert {(p["array"], p["kind"]) for p in rep["problems"]} == {("stage_a", "missing"), ("captions", "damaged")}
    with pytest.raises(InputError, match="captions: chunk 3 .* damaged"):
        _rows(LatentDataset(s, fields=["latents", "captions"], batch_size=4, shuffle=False))
    build(s)
    assert verify_store(s)["ok"]
    want, got = store_arrays(good), store_arrays(s)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_text_chunk_deleted_or_damaged_is_refused_and_re_embedded(good, tmp_path):
    s = copy(good, tmp_path / "s.zarr")
    chunk_file(s, "clip_text", 1).unlink()
    flip_byte(chunk_file(s, "clip_text_pooled", 3))
    rep = verify_store(s)
    assert {(p["array"], p["chunk"], p["kind"]) for p in rep["problems"]} == {
        ("clip_text", 1, "missing"), ("clip_text_pooled", 3, "damaged")}

    with pytest.warns(UserWarning, match="clip_text chunk 1"):
        ds = LatentDataset(s, fields=["latents", "clip_text"], batch_size=4, shuffle=False)
    assert 4 not in _rows(ds) and 0 in _rows(ds)
    with pytest.raises(InputError, match="missing chunk files"):
        open_train_data(s)

    enc = FakeText()
    res = add_text_embeddings(s, enc, batch_size=8, progress=False)
    text_chunk = int(S.open_store(s)["clip_text"].chunks[0])
    redo = len({4 // text_chunk, 12 // text_chunk})
    assert res["embedded"] == redo * text_chunk and enc.calls == 1 + redo  # the probe + the chunks redone
    assert verify_store(s)["ok"]
    a, b = S.open_store(s), S.open_store(good)
    for name in ("clip_text", "clip_text_pooled", "text_status"):
        np.testing.assert_array_equal(np.asarray(a[name][:]), np.asarray(b[name][:]), err_msg=name)


def test_missing_status_array_is_a_clear_input_error(good, tmp_path):
    s = copy(good, tmp_path / "s.zarr")
    shutil.rmtree(s / "status")
    with pytest.raises(InputError, match="the status array is missing; the store is damaged"):
        LatentDataset(s)
    with pytest.raises(InputError, match="status array is missing"):
        open_train_data(s)
    r = CliRunner().invoke(main, ["inspect", str(s), "--no-preview"], catch_exceptions=False)
    assert r.exit_code == 2 and "error:" in r.output and "status array is missing" in r.output
    assert "Traceback" not in r.output and "KeyError" not in r.output


def test_damaged_status_chunk_reads_pending_is_reported_and_rebuilt(good, tmp_path):
    s = copy(good, tmp_path / "s.zarr")
    truncate(chunk_file(s, "status", 1))
    rep = verify_store(s)
    assert [(p["array"], p["chunk"], p["kind"]) for p in rep["problems"]] == [("status", 1, "damaged")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zstd traceback, no warning: the rows are not done
        assert _rows(LatentDataset(s, batch_size=4, shuffle=False)) == [r for r in range(N) if not 4 <= r < 8]
    build(s)
    assert verify_store(s)["ok"]
    np.testing.assert_array_equal(store_arrays(s)["/status"], store_arrays(good)["/status"])


def test_unwritten_text_status_chunk_is_pending_work_not_damage(good, tmp_path):
    s = copy(good, tmp_path / "s.zarr")
    chunk_file(s, "text_status", 2).unlink()  # as after an embed-text killed before that chunk
    assert verify_store(s)["ok"]
    ds = LatentDataset(s, fields=["latents", "clip_text"], batch_size=4, shuffle=False)
    assert _rows(ds) == [r for r in range(N) if not 8 <= r < 12]  # no embeddings there yet: not returned
    with pytest.raises(InputError, match="4 samples of group 'root' have no text embedding yet"):
        open_train_data(s)
    enc = FakeText()
    assert add_text_embeddings(s, enc, progress=False)["embedded"] == 4 and enc.calls == 2
    np.testing.assert_array_equal(np.asarray(S.open_store(s)["text_status"][:]),
                                  np.asarray(S.open_store(good)["text_status"][:]))


def test_encode_on_a_store_without_status_says_how_to_recover(good, tmp_path):
    s = copy(good, tmp_path / "s.zarr")
    shutil.rmtree(s / "status")
    with pytest.raises(InputError, match=r"status array is missing; the store is damaged \(delete .* and run"):
        build(s)
    shutil.rmtree(s)
    build(s)  # the advice works
    assert verify_store(s)["ok"]
