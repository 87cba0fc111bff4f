"""Store format version 2: dimension names consistent across the store (xarray opens it), and version-1 stores
(shared ``channel``/``y``/``x`` names, no checksums, fill-only chunks unwritten) still read everywhere."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from store_helpers import FakeText, build, chunk_file, full_store, write_v1_store  # noqa: E402

from cascadekit.cli.main import main
from cascadekit.codec.errors import InputError
from cascadekit.datasets import store as S
from cascadekit.datasets.inspect import inspect_store
from cascadekit.datasets.reader import LatentDataset
from cascadekit.datasets.text_embeddings import add_text_embeddings
from cascadekit.datasets.verify import verify_store
from cascadekit.generator.data import open_train_data


def test_xarray_opens_a_store_with_every_optional_array(tmp_path):
    xr = pytest.importorskip("xarray")
    s = full_store(tmp_path / "s.zarr")
    root = S.open_store(s)
    assert {"latents", "stage_a", "clip_text", "clip_text_pooled", "text_status"} <= set(root.array_keys())
    ds = xr.open_zarr(str(s), consolidated=False)
    assert ds["latents"].dims == ("sample", "latent_channel", "latent_y", "latent_x")
    assert ds["stage_a"].dims == ("sample", "stage_a_channel", "stage_a_y", "stage_a_x")
    assert ds["clip_text"].dims == ("sample", "text_token", "text_channel")
    assert ds.sizes["latent_channel"] == 16 and ds.sizes["stage_a_channel"] == 4 and ds.sizes["text_channel"] == 4
    np.testing.assert_array_equal(ds["latents"].values, np.asarray(root["latents"][:]))
    np.testing.assert_array_equal(ds["clip_text_pooled"].values, np.asarray(root["clip_text_pooled"][:]))
    ok = ds["status"].values == S.STATUS_OK
    assert ok.sum() == root.attrs["n_ok"] > 0
    assert list(ds["captions"].values[:2]) == ["caption 0", "caption 1"]
    for name, arr in root.arrays():  # every array of the store names its dimensions
        assert arr.metadata.dimension_names is not None and len(arr.metadata.dimension_names) == arr.ndim, name


def _v1(tmp_path, n=10):
    rng = np.random.default_rng(3)
    lat = rng.standard_normal((n, 16, 2, 2)).astype(np.float32)
    status = np.ones(n, np.uint8)
    status[5] = S.STATUS_SKIPPED
    lat[5] = 0
    return write_v1_store(tmp_path / "v1.zarr", lat, [""] * 4 + [f"c {i}" for i in range(4, n)], status), lat, status


def test_version_1_store_reads_in_every_reader(tmp_path):
    s, lat, status = _v1(tmp_path)
    assert not (Path(s) / "captions" / "c" / "0").exists()  # v1 did not write a chunk of empty captions
    ds = LatentDataset(s, batch_size=3, shuffle=False)
    rows = [int(r) for b in ds for r in b["rows"]]
    assert rows == [r for r in range(10) if r != 5]
    b = next(iter(LatentDataset(s, batch_size=10, shuffle=False)))
    np.testing.assert_array_equal(b["latents"].numpy(), lat[b["rows"].numpy()].astype(np.float16))
    assert b["captions"][:4] == [""] * 4 and b["captions"][4] == "c 4"
    data = open_train_data(s)
    assert [g.size for g in data.groups] == [9]
    np.testing.assert_array_equal(data.read("root", [0, 5])["latents"].numpy(),
                                  lat[[0, 6]].astype(np.float16).astype(np.float32))
    assert verify_store(s)["ok"]  # unchecksummed chunks are decoded instead
    rep = inspect_store(s)
    assert rep["format_version"] == 1 and rep["ok"] == 9 and rep["groups"]["/"]["missing_chunks"] == []


def test_version_1_store_gets_embeddings_and_its_lost_chunks_are_found(tmp_path):
    s, lat, _ = _v1(tmp_path)
    res = add_text_embeddings(s, FakeText(), progress=False)
    assert res["embedded"] == 9 and res["empty"] == 4
    root = S.open_store(s)
    assert root["clip_text"].metadata.dimension_names == S.dimension_names("clip_text", 1)
    b = next(iter(LatentDataset(s, fields=["latents", "clip_text"], batch_size=10, shuffle=False)))
    assert float(b["clip_text"][0, 0, 0]) == -1.0 and float(b["clip_text"][4, 0, 0]) == 5.0
    chunk_file(s, "latents", 2).unlink()
    assert [(p["array"], p["kind"]) for p in verify_store(s)["problems"]] == [("latents", "missing")]
    with pytest.warns(UserWarning, match="latents chunk 2"):
        assert len(LatentDataset(s, batch_size=1, shuffle=False)) == 9 - 2  # rows 8, 9


def test_unknown_format_version_is_refused_naming_it(tmp_path):
    s = tmp_path / "s.zarr"
    build(s, n=4)
    root = S.open_store(s, mode="r+")
    root.attrs["format_version"] = 7
    with pytest.raises(InputError, match="format version 7 is not supported .*versions 1, 2"):
        LatentDataset(s)
    r = CliRunner().invoke(main, ["inspect", str(s), "--no-preview"], catch_exceptions=False)
    assert r.exit_code == 2 and "format version 7" in r.output


def test_trainer_data_protocol_has_field_shapes(tmp_path):
    s = full_store(tmp_path / "s.zarr")
    data = open_train_data(s)
    assert data.field_shapes == {"clip_text": (6, 4), "clip_text_pooled": (1, 3)}
    assert data.fields == {"latents", "captions", "clip_text", "clip_text_pooled"}
    b = data.read("root", [2, 0])
    assert b["captions"] == ["caption 2", "caption 0"] and b["clip_text"].dtype == torch.float32
    assert float(b["clip_text"][0, 0, 0]) == 3.0
