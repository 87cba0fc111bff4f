"""The public store format: chunking, compression, bytes per sample and provenance attributes."""
from __future__ import annotations

import datetime as dt

import numpy as np

from cascadekit.datasets import store as S
from cascadekit.datasets.inspect import _disk_bytes
from cascadekit.datasets.writer import ChunkWriter, RowBatch


def test_chunking_codecs_bytes_per_sample_and_attrs(tmp_path):
    n, chunk = 96, 32
    path = tmp_path / "f.zarr"
    root = S.create_store(path, [S.GroupLayout("", n, (16, 24, 24))], chunk_rows=chunk, dtype="float16",
                          attrs={"settings": {}})
    w = ChunkWriter(root, chunk, "float16")
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((n, 16, 24, 24), dtype=np.float32)  # like real latents: ~unit variance
    w.add(RowBatch("", np.arange(n), np.ones(n, bool), [f"k{i}" for i in range(n)], ["a cap"] * n,
                   [f"/d/{i}.jpg" for i in range(n)], np.full((n, 2), 512, np.int32), [""] * n, lat))
    S.finalize_store(path)
    g = S.open_store(path)
    a = g["latents"]
    assert a.dtype == np.float16 and a.shape == (n, 16, 24, 24)
    assert a.chunks == (chunk, 16, 24, 24)  # whole samples, chunk_rows rows: contiguous block reads
    for name in S.ROW_ARRAYS:
        assert g[name].chunks[0] == chunk, name
    # floating-point arrays: blosc lz4 + bitshuffle (typesize = item size), then crc32c; all others: zstd-3, crc32c
    blosc, crc = a.compressors
    assert type(blosc).__name__ == "BloscCodec" and blosc.cname.value == "lz4" and blosc.typesize == 2
    assert blosc.shuffle.value == "bitshuffle" and type(crc).__name__ == "Crc32cCodec"
    for arr in [g[name] for name in S.ROW_ARRAYS] + [g["errors"][name] for name in ("row", "key", "source", "reason")]:
        names = [type(c).__name__ for c in arr.compressors]
        assert names == ["ZstdCodec", "Crc32cCodec"] and arr.compressors[0].level == S.ZSTD_LEVEL == 3, arr.path
    per = _disk_bytes(path / "latents") / n
    assert 0.7 * 18432 < per < 1.05 * 18432, per  # close to the raw float16 size
    np.testing.assert_array_equal(np.asarray(a[:]), lat.astype(np.float16))
    at = g.attrs
    assert at["format"] == "cascadekit.latent-dataset" and at["format_version"] == S.FORMAT_VERSION
    assert isinstance(at["tool_version"], str) and at["tool_version"]
    created = dt.datetime.fromisoformat(at["created"])
    assert created.tzinfo is not None and abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 600
    assert at["complete"] and at["n_ok"] == n
    np.testing.assert_allclose(at["latent_mean"], lat.astype(np.float16).astype(np.float64).mean((0, 2, 3)), atol=1e-6)
