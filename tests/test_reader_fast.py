"""The direct chunk path (datasets/chunk_decode.py): the same values as zarr's reads for every array and codec
chain a store may hold, damage still found, and the readers built on it (LatentDataset's shuffle buffers, the
trainer) return the stored rows, also for a field chunked finer than the store's chunk_rows."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

sys.path.insert(0, str(Path(__file__).parent))
from store_helpers import chunk_file, flip_byte, full_store, truncate, write_v1_store  # noqa: E402

from cascadekit.codec.errors import InputError
from cascadekit.datasets import store as S
from cascadekit.datasets.access import ChunkCache, LatentStore
from cascadekit.datasets.chunk_decode import decoder_for
from cascadekit.datasets.reader import LatentDataset
from cascadekit.datasets.writer import ChunkWriter, RowBatch
from cascadekit.generator.data import open_train_data


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return full_store(tmp_path_factory.mktemp("full") / "s.zarr")  # latents, stage_a, text, captions, ...


def _both(arr, presence=True):
    """Every row of ``arr`` read by the direct path and by zarr."""
    rows = np.arange(arr.shape[0])
    fast, ref = (ChunkCache(arr, 0, presence=presence, direct=d) for d in (True, False))
    return fast.rows(rows), ref.rows(rows)


def test_every_array_of_a_store_reads_the_same_directly(full):
    g = LatentStore(full).group("")
    for name in sorted(g.g.array_keys()):
        arr = g.g[name]
        assert decoder_for(arr, True) is not None, name  # numbers and strings alike take the direct path
        fast, ref = _both(arr)
        assert fast.dtype == ref.dtype and fast.shape == ref.shape, name
        np.testing.assert_array_equal(fast, ref, err_msg=name)


@pytest.mark.parametrize("codecs", [
    {"compressors": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")},
    {"compressors": (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"), Crc32cCodec())},
    {"compressors": None},
    {"compressors": None, "serializer": BytesCodec(endian="big")},  # not native: read by zarr
])
def test_other_codec_chains_and_a_partial_last_chunk(tmp_path, codecs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((21, 3, 5)).astype(np.float16)  # 21 rows in chunks of 8: the last one partial
    arr = zarr.open_group(str(tmp_path / "z.zarr"), mode="w").create_array("a", shape=x.shape, chunks=(8, 3, 5),
                                                                          dtype="float16", fill_value=0, **codecs)
    arr[:] = x
    big = "serializer" in codecs
    assert (decoder_for(arr, True) is None) == big
    fast, ref = _both(arr)
    np.testing.assert_array_equal(fast, x)
    np.testing.assert_array_equal(ref, x)
    assert ChunkCache(arr, 1).chunk(2).shape == (5, 3, 5)
    assert big or not ChunkCache(arr, 1).chunk(0).flags.writeable  # cached chunks are shared: read-only


def test_damage_is_found_on_the_direct_path(full, tmp_path):
    import shutil

    s = Path(shutil.copytree(full, tmp_path / "s.zarr"))
    flip_byte(chunk_file(s, "latents", 1))
    chunk_file(s, "stage_a", 2).unlink()
    chunk_file(s, "captions", 0).write_bytes(b"")
    g = LatentStore(s).group("")
    with pytest.raises(InputError, match=r"latents: chunk 1 \(rows 4..7\) is damaged and cannot be read "
                                         r"\(crc32c checksum mismatch.*inspect --verify"):
        g.cache("latents", keep=0).rows([5])
    with pytest.raises(InputError, match=r"stage_a: chunk 2 \(rows 8..11\) is missing \(chunk file deleted"):
        g.cache("stage_a", keep=0).rows([9])
    with pytest.raises(InputError, match=r"captions: chunk 0 \(rows 0..3\) is damaged \(empty chunk file\)"):
        g.cache("captions", keep=0).rows([0])
    chunk_file(s, "keys", 3).unlink()  # a string array's missing chunk reads as its fill value, as zarr reads it
    fast, ref = _both(g.array("keys"), presence=False)
    assert list(fast[12:]) == [""] * 4 and list(fast) == list(ref)


def test_version_1_store_without_checksums(tmp_path):
    rng = np.random.default_rng(1)
    lat = rng.standard_normal((10, 16, 2, 2)).astype(np.float16)
    s = write_v1_store(tmp_path / "v1.zarr", lat, [f"c {i}" for i in range(10)], np.ones(10, np.uint8))
    g = LatentStore(s).group("")
    np.testing.assert_array_equal(g.cache("latents").rows(np.arange(10)), lat)
    truncate(chunk_file(s, "latents", 1))
    with pytest.raises(InputError, match=r"latents: chunk 1 \(rows 4..7\) is damaged and cannot be read"):
        LatentStore(s).group("").cache("latents", keep=0).rows([4])


def _stage_a_store(path: Path, n: int = 150, chunk: int = 128) -> Path:
    """Stage A 4x96x96 (72 KiB a row) in a store of 128-row chunks: its chunks hold 64 rows (<= 8 MiB)."""
    root = S.create_store(path, [S.GroupLayout("", n, (16, 2, 2), (4, 96, 96))], chunk_rows=chunk,
                          dtype="float16", attrs={"settings": {}})
    w = ChunkWriter(root, chunk, "float16")
    rng = np.random.default_rng(0)
    for a in range(0, n, chunk):
        rows = np.arange(a, min(a + chunk, n))
        ok = rng.random(len(rows)) > 0.2
        k = int(ok.sum())
        w.add(RowBatch("", rows, ok, [f"k{i}" for i in rows], [f"c {i}" for i in rows], [f"/d/{i}" for i in rows],
                       np.full((len(rows), 2), 64, np.int32), ["" if o else "too_small" for o in ok],
                       rng.standard_normal((k, 16, 2, 2)).astype(np.float32),
                       rng.standard_normal((k, 4, 96, 96)).astype(np.float32)))
    S.finalize_store(path)
    return path


def test_readers_with_a_field_chunked_finer_than_the_store(tmp_path):
    s = _stage_a_store(tmp_path / "sa.zarr")
    root = S.open_store(s)
    assert root["stage_a"].chunks[0] == 64 and root["latents"].chunks[0] == 128
    ok = np.flatnonzero(np.asarray(root["status"][:]) == S.STATUS_OK)
    lat, sa = np.asarray(root["latents"][:]), np.asarray(root["stage_a"][:])
    for kw in ({"shuffle": False, "buffer_blocks": 1}, {"shuffle": True, "buffer_blocks": 2, "seed": 4}):
        ds = LatentDataset(s, fields=["latents", "stage_a", "captions"], batch_size=9, in_memory=False, **kw)
        seen = []
        for b in ds:
            r = b["rows"].numpy()
            np.testing.assert_array_equal(b["latents"].numpy(), lat[r])
            np.testing.assert_array_equal(b["stage_a"].numpy(), sa[r])
            assert b["captions"] == [f"c {i}" for i in r]
            seen += r.tolist()
        assert sorted(seen) == ok.tolist() and len(seen) == len(ok)
    data = open_train_data(s)
    want = ok[[5, 0, 77, 3]]
    np.testing.assert_array_equal(data.read("root", [5, 0, 77, 3])["latents"].numpy(), lat[want].astype(np.float32))


def test_latent_dataset_batches_equal_on_both_paths(full):
    class ZarrPath(LatentDataset):
        def _arrays(self, st):
            return [{f: st.group(g.path).cache(f, keep=0, direct=False) for f in self.fields} for g in self._groups]

    for kw in ({"batch_size": 3, "buffer_blocks": 2}, {"batch_size": 5, "buffer_blocks": 1, "drop_last": True}):
        a, b = (cls(full, fields=["latents", "stage_a", "captions", "keys"], in_memory=False, seed=2, **kw)
                for cls in (LatentDataset, ZarrPath))
        got, ref = list(a), list(b)
        assert len(got) == len(ref) > 0
        for x, y in zip(got, ref):
            assert x["captions"] == y["captions"] and x["keys"] == y["keys"]
            for f in ("rows", "latents", "stage_a"):
                np.testing.assert_array_equal(x[f].numpy(), y[f].numpy())


def test_batch_plan_keeps_a_groups_batches_together_so_chunks_are_decoded_once():
    from collections import OrderedDict

    from cascadekit.generator.batches import BatchPlan, Group

    groups = [Group("a", 96, (16, 2, 2), chunk=4), Group("b", 64, (16, 2, 4), chunk=4)]
    plan = BatchPlan(groups, 4, seed=1, window=2)  # a window (8 rows) = 2 batches
    seq = [plan.batch(k) for k in range(plan.batches_per_epoch)]
    names = [g.name for g, _, _ in seq]
    assert names.count("a") == 24 and names.count("b") == 16 and names != sorted(names)  # groups interleaved
    for g in groups:
        idx = [i for grp, ix, _ in seq if grp.name == g.name for i in ix]
        assert sorted(idx) == list(range(g.size))
        cache, decodes = OrderedDict(), 0  # the trainer's ChunkCache: LRU of 2 windows of chunks per group
        for c in (i // g.chunk for i in idx):
            decodes += c not in cache
            cache[c] = cache.pop(c, None)
            while len(cache) > 4:
                cache.popitem(last=False)
        assert decodes == g.size // g.chunk  # every chunk decoded once per epoch
    again = BatchPlan(groups, 4, seed=1, window=2)
    assert [plan.batch(k)[1] for k in range(8)] == [again.batch(k)[1] for k in range(8)]  # seeded


def test_whole_chunks_decompressed_in_place_equal_the_stored_rows(full, tmp_path):
    g = LatentStore(full).group("")
    arr = g.array("latents")
    c = arr.chunks[0]
    rows = np.arange(c, 3 * c)  # two whole chunks
    for cache in (g.cache("latents", keep=0), g.cache("latents", keep=0, direct=False)):
        out = np.full((len(rows), *arr.shape[1:]), np.nan, arr.dtype)
        cache.read_into(rows, out)
        np.testing.assert_array_equal(out, np.asarray(arr[c:3 * c]))
    import shutil

    s = Path(shutil.copytree(full, tmp_path / "s.zarr"))
    flip_byte(chunk_file(s, "latents", 2))
    out = np.zeros((len(rows), *arr.shape[1:]), arr.dtype)
    with pytest.raises(InputError, match=r"latents: chunk 2 \(rows 8..11\) is damaged and cannot be read \(crc32c"):
        LatentStore(s).group("").cache("latents", keep=0).read_into(rows, out)
