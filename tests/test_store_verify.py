"""`inspect --verify`: one `error:` line (how many chunks, the remedy) when chunks are lost, and the missing-chunk
rule per format version: version 2 writes every chunk (a missing one is lost data in any per-row array),
version 1 did not write chunks holding only fill values (there only the data arrays must exist)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from generator_helpers import random_embeddings, tiny_store, write_store  # noqa: E402
from store_helpers import CHUNK, build, chunk_file, write_v1_store  # noqa: E402

from cascadekit.cli.main import main
from cascadekit.datasets import store as S
from cascadekit.datasets.verify import verify_store


def _verify_cli(store):
    return CliRunner().invoke(main, ["inspect", str(store), "--verify", "--no-preview"],
                              catch_exceptions=False)


def test_helper_stores_verify_clean_also_with_all_fill_chunks(tmp_path):
    assert verify_store(tiny_store(tmp_path / "t.zarr"))["ok"]
    lat = torch.randn(8, 16, 2, 2)
    lat[:4] = 0  # a latent chunk equal to the fill value
    t, p = random_embeddings(8)
    t[4:], p[4:] = 0, 0
    s = write_store(tmp_path / "z.zarr", {"": lat}, captions={"": [""] * 8}, embeddings={"": (t, p)})
    assert (chunk_file(s, "latents", 0)).exists() and chunk_file(s, "clip_text", 1).exists()
    rep = verify_store(s)
    assert rep["ok"] and rep["problems"] == [], rep["problems"]
    r = _verify_cli(s)
    assert r.exit_code == 0 and "none missing or damaged" in r.stdout and r.stderr == ""


def test_v2_missing_caption_chunk_is_lost_data_with_one_error_line(tmp_path):
    s = tmp_path / "s.zarr"
    build(s, captions=False, n=8)  # empty captions: chunks of fill values, written all the same
    assert chunk_file(s, "captions", 1).exists() and verify_store(s)["ok"]
    chunk_file(s, "captions", 1).unlink()
    chunk_file(s, "latents", 0).unlink()
    rep = verify_store(s)
    assert sorted((p["array"], p["chunk"], p["kind"]) for p in rep["problems"]) == [
        ("captions", 1, "missing"), ("latents", 0, "missing")]
    r = _verify_cli(s)
    assert r.exit_code == 2 and "Traceback" not in r.stdout + r.stderr
    last = r.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("error: ")
    assert "2 chunk(s)" in last[0] and "2 missing" in last[0] and f"{2 * CHUNK} ok rows" in last[0]
    assert "rerun `cascadekit encode`" in last[0] and "embed-text" not in last[0]


def test_lost_text_chunk_names_embed_text(tmp_path):
    s = tiny_store(tmp_path / "t.zarr")
    chunk_file(s, "clip_text_pooled", 1).unlink()
    r = _verify_cli(s)
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert line.startswith("error: ") and "1 chunk(s)" in line and "1 missing" in line
    assert "rerun `cascadekit embed-text`" in line and "encode" not in line


def test_v1_all_fill_chunks_may_be_absent_but_lost_data_is_found(tmp_path):
    n = 8
    lat = np.random.default_rng(0).standard_normal((n, 16, 2, 2)).astype(np.float32)
    s = write_v1_store(tmp_path / "v1.zarr", lat, [""] * CHUNK + [f"c {i}" for i in range(CHUNK, n)],
                       np.full(n, S.STATUS_OK, np.uint8))
    assert not chunk_file(s, "captions", 0).exists()  # version 1 skipped the all-'' chunk
    assert verify_store(s)["ok"] and _verify_cli(s).exit_code == 0
    chunk_file(s, "keys", 1).unlink()  # indistinguishable from an all-fill chunk in version 1: not an alarm
    assert verify_store(s)["ok"]
    chunk_file(s, "latents", 1).unlink()  # numeric data is never all fill values: lost
    rep = verify_store(s)
    assert [(p["array"], p["chunk"], p["kind"]) for p in rep["problems"]] == [("latents", 1, "missing")]
    r = _verify_cli(s)
    assert r.exit_code == 2 and r.stderr.strip().startswith("error: ") and "1 missing" in r.stderr
