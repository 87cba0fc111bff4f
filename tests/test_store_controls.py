"""Controls precomputed into a store: encode --controls writes them with the latents; add-controls adds the same
bytes to a finished store, resumably; inspect --verify and select see them; bad input fails before work."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from controlnet_train_helpers import SIDE, block_images, make_store

from cascadekit.codec.errors import InputError
from cascadekit.datasets import store as S
from cascadekit.datasets.access import LatentStore
from cascadekit.datasets.add_controls import add_controls
from cascadekit.datasets.verify import verify_store
from cascadekit.generator.controls import canny_map

ARRAYS = ("control_canny", "control_sr", "control_inpaint")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctl")
    images = block_images(d / "images", n=10)
    return {"images": images, "with": make_store(d / "with.zarr", images), "d": d}


def _arrays(path):
    root = S.open_store(path)
    return {a: np.asarray(root[a][:]) for a in ARRAYS + tuple(f"{a}_status" for a in ARRAYS) if a in root}


def test_encode_controls_fields(stores):
    gv = LatentStore(stores["with"]).groups[0]
    assert {"control_canny", "control_sr", "control_inpaint"} <= set(gv.fields)
    assert gv.shape("control_canny") == (224, 224) and gv.dtype("control_canny") == np.uint8
    assert gv.shape("control_inpaint") == (3, SIDE, SIDE) and gv.shape("control_sr") == (16, 1, 1)
    sel = gv.select(["latents", *ARRAYS])
    assert len(sel.rows) == 10
    # the stored map is the official filter's 224² intermediate of the crop
    pixels = torch.from_numpy(gv.cache("control_inpaint").rows(sel.rows[:3]))
    assert torch.equal(torch.from_numpy(gv.cache("control_canny").rows(sel.rows[:3])), canny_map(pixels.float() / 255))
    assert verify_store(stores["with"])["ok"]


def test_add_controls_equals_encode_controls_and_resumes(stores, tmp_path):
    from controlnet_train_helpers import SpreadEncoder

    bare = make_store(tmp_path / "bare.zarr", stores["images"], ())
    res = add_controls(bare, "canny,sr,inpaint", SpreadEncoder(), progress=False)
    assert res["rows_done"] == 10 and res["skipped"] == {}
    want, got = _arrays(stores["with"]), _arrays(bare)
    for k in want:
        assert np.array_equal(want[k], got[k]), k
    # a rerun has nothing to do; a lost control chunk is redone (and only it)
    assert add_controls(bare, "canny", progress=False)["chunks"] == 0
    from store_helpers import chunk_file

    chunk_file(bare, "control_canny", 1).unlink()
    assert not verify_store(bare)["ok"]
    assert add_controls(bare, "canny", progress=False)["chunks"] == 1
    assert np.array_equal(_arrays(bare)["control_canny"], want["control_canny"]) and verify_store(bare)["ok"]


def test_add_controls_bad_input(stores, tmp_path):
    with pytest.raises(InputError, match="unknown control"):
        add_controls(stores["with"], "depth", progress=False)
    with pytest.raises(InputError, match="needs the EfficientNet encoder"):
        add_controls(stores["with"], "sr", progress=False)
    from store_helpers import build

    build(tmp_path / "mem.zarr")  # in-memory images: no source file to read again
    with pytest.raises(InputError, match="not a file that can be read again"):
        add_controls(tmp_path / "mem.zarr", "canny", progress=False)
