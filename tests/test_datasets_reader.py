"""LatentDataset: shuffled batched reads, rank and worker splits, text embeddings, in-memory vs blocks."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import TinyEncoder, store_arrays  # noqa: E402

from cascadekit.codec.errors import InputError
from cascadekit.datasets import store as S
from cascadekit.datasets.builder import build_latent_dataset
from cascadekit.datasets.reader import LatentDataset
from cascadekit.datasets.sources import samples_from_images

N = 53  # not a multiple of chunk, batch or ranks


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    imgs = [(f"img{i:03d}", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(N)]
    imgs[7] = ("img007", np.zeros((4, 4, 3), np.uint8))  # too small -> skipped, must never be returned
    samples = samples_from_images(imgs, captions=[f"caption {i}" for i in range(N)])
    out = tmp_path_factory.mktemp("r") / "s.zarr"
    build_latent_dataset(samples, out, TinyEncoder(), resolution=64, batch_size=4, chunk_rows=8,
                         num_workers=0, progress=False, min_size=32)
    return out


def _rows(ds):
    return [int(r) for b in ds for r in b["rows"]]


@pytest.mark.parametrize("in_memory", [False, True])
def test_epoch_is_a_permutation_of_complete_rows(store, in_memory):
    ds = LatentDataset(store, batch_size=5, seed=1, in_memory=in_memory, buffer_blocks=2)
    a = store_arrays(store)
    want = sorted(np.flatnonzero(a["/status"] == 1).tolist())
    assert 7 not in want and len(want) == N - 1
    r0 = _rows(ds)
    assert sorted(r0) == want and r0 != want  # all rows once, shuffled
    ds.set_epoch(1)
    r1 = _rows(ds)
    assert sorted(r1) == want and r1 != r0
    ds.set_epoch(0)
    assert _rows(ds) == r0  # deterministic per (seed, epoch)
    b = next(iter(ds))
    assert b["latents"].shape == (5, 16, 2, 2) and b["latents"].dtype == torch.float16  # as stored
    assert next(iter(LatentDataset(store, batch_size=2, dtype=torch.float32)))["latents"].dtype == torch.float32
    i = int(b["rows"][0])
    np.testing.assert_array_equal(b["latents"][0].numpy(), a["/latents"][i].astype(np.float32))
    assert b["captions"][0] == f"caption {i}"


def test_unshuffled_reads_in_order(store):
    ds = LatentDataset(store, batch_size=4, shuffle=False, in_memory=False)
    assert _rows(ds) == [r for r in range(N) if r != 7]


@pytest.mark.parametrize("in_memory", [False, True])
def test_rank_split_disjoint_complete_and_balanced(store, in_memory):
    parts = [_rows(LatentDataset(store, batch_size=4, rank=r, world_size=3, seed=3, in_memory=in_memory))
             for r in range(3)]
    flat = [x for p in parts for x in p]
    assert len(flat) == len(set(flat)) == N - 1
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert len(LatentDataset(store, batch_size=4, rank=0, world_size=3, drop_last=True)) == len(parts[0]) // 4


def test_dataloader_workers_split(store):
    ds = LatentDataset(store, batch_size=4, seed=5, in_memory=False)
    dl = DataLoader(ds, batch_size=None, num_workers=2)
    rows = [int(r) for b in dl for r in b["rows"]]
    assert sorted(rows) == sorted(_rows(ds)) and len(rows) == N - 1


def test_fields_and_errors(store):
    ds = LatentDataset(store, fields=["latents", "keys", "orig_size"], batch_size=8, shuffle=False)
    b = next(iter(ds))
    assert set(b) == {"latents", "keys", "orig_size", "rows", "group"}
    assert b["keys"][0] == "img000" and b["orig_size"][0].tolist() == [64, 64]
    with pytest.raises(InputError, match="clip_text"):
        LatentDataset(store, fields=["latents", "clip_text"])
    with pytest.raises(InputError, match="not a cascadekit latent store"):
        LatentDataset(store / "latents")


def test_text_embeddings_resumable_and_returned(store, tmp_path):
    import shutil

    from cascadekit.datasets.text_embeddings import add_text_embeddings

    s2 = tmp_path / "t.zarr"
    shutil.copytree(store, s2)

    class FakeText:
        model = torch.nn.Linear(2, 2)
        source = "fake"
        max_length = 6
        calls = 0

        def encode(self, prompts):
            FakeText.calls += 1
            n = torch.tensor([float(p.split()[-1]) if p else -1.0 for p in prompts])
            h = n.view(-1, 1, 1).expand(-1, 6, 4).clone()
            return h, (n * 2).view(-1, 1).expand(-1, 3).clone()

    res = add_text_embeddings(s2, FakeText(), batch_size=3, progress=False)
    assert res["embedded"] == N - 1
    g = S.open_store(s2, mode="r+")
    assert g["clip_text"].shape == (N, 6, 4) and g["clip_text_pooled"].shape == (N, 1, 3)
    g["text_status"][8:16] = 0  # as if killed before this chunk
    g["clip_text"][8:16] = 0
    FakeText.calls = 0
    res = add_text_embeddings(s2, FakeText(), batch_size=3, progress=False)
    assert res["embedded"] == 8 and FakeText.calls == 1 + 3  # the probe + one chunk in batches of 3
    ds = LatentDataset(s2, batch_size=6, shuffle=False)
    assert set(ds.fields) >= {"clip_text", "clip_text_pooled"}
    for b in ds:
        for r, h, p in zip(b["rows"], b["clip_text"], b["clip_text_pooled"]):
            assert float(h[0, 0]) == float(r) and float(p[0, 0]) == 2 * float(r)
