"""Reading checkpoints: corrupt/truncated files, refused pickles, dtype conversion, sharded folders, sha256."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cascadekit.codec.errors import WeightsError
from cascadekit.codec.weights import (
    build,
    load_weights,
    official_to_diffusers,
    read_state_dict,
    sha256_file,
)


def small_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(7)}


@pytest.fixture
def st_file(tmp_path) -> Path:
    p = tmp_path / "w.safetensors"
    save_file(small_state(), str(p))
    return p


def test_safetensors_round_trip(st_file):
    sd = read_state_dict(st_file)
    ref = small_state()
    assert sd.keys() == ref.keys()
    for k in ref:
        assert torch.equal(sd[k], ref[k])


def test_truncated_safetensors(st_file, tmp_path):
    data = st_file.read_bytes()
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(data[:-5])
    with pytest.raises(WeightsError, match=r"trunc\.safetensors.*truncated"):
        read_state_dict(bad)


def test_trailing_bytes_rejected(st_file, tmp_path):
    bad = tmp_path / "padded.safetensors"
    bad.write_bytes(st_file.read_bytes() + b"\0" * 16)
    with pytest.raises(WeightsError, match="trailing bytes"):
        read_state_dict(bad)


def test_header_length_larger_than_file(tmp_path):
    bad = tmp_path / "big_header.safetensors"
    bad.write_bytes(struct.pack("<Q", 5000) + b"{}")
    with pytest.raises(WeightsError, match=r"big_header\.safetensors: header length 5000 is larger than the file"):
        read_state_dict(bad)


def test_garbage_json_header(tmp_path):
    junk = b"this is not json at all!"
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(struct.pack("<Q", len(junk)) + junk)
    with pytest.raises(WeightsError, match="JSON header is not valid"):
        read_state_dict(bad)


def test_inconsistent_tensor_size(tmp_path):
    header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    bad = tmp_path / "sizes.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(WeightsError, match="should take 16 bytes"):
        read_state_dict(bad)


def test_zero_bytes_directory_missing_unknown(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty \\(0 bytes\\)"):
        read_state_dict(empty)
    with pytest.raises(WeightsError, match="is a directory"):
        read_state_dict(tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    other = tmp_path / "w.npz"
    other.write_bytes(b"123")
    with pytest.raises(WeightsError, match="unknown weights format"):
        read_state_dict(other)


class _Evil:
    """Pickling this records a call that would create a marker file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("via", ["torch.save", "pickle"])
def test_malicious_pickle_is_not_executed(tmp_path, via):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "model.bin"
    payload = {"w": torch.zeros(2), "evil": _Evil(marker)}
    if via == "torch.save":
        torch.save(payload, str(evil))
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    with pytest.raises(WeightsError, match="refused to load"):
        read_state_dict(evil)
    assert not marker.exists(), "the pickle payload was executed"


def test_plain_torch_checkpoint_and_lightning_nesting(tmp_path):
    p = tmp_path / "plain.pt"
    torch.save(small_state(), str(p))
    assert torch.equal(read_state_dict(p)["a.weight"], small_state()["a.weight"])
    q = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": small_state(), "epoch": 3}, str(q))
    assert set(read_state_dict(q)) == set(small_state())
    r = tmp_path / "notdict.pth"
    torch.save([torch.zeros(1)], str(r))
    with pytest.raises(WeightsError, match="expected a dict of tensors"):
        read_state_dict(r)


def test_build_reports_missing_unexpected_and_misshaped():
    factory = lambda: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))  # noqa: E731
    good = {k: torch.ones_like(v, device="cpu") for k, v in factory().state_dict().items()}
    model = build(factory, good)
    assert torch.equal(model[0].weight, torch.ones(4, 3))
    bad = dict(good)
    del bad["1.bias"]
    bad["2.weight"] = torch.zeros(1)
    bad["0.weight"] = torch.zeros(5, 3)
    with pytest.raises(WeightsError) as e:
        build(factory, bad, name="TwoLinear")
    text = str(e.value)
    assert "TwoLinear" in text
    assert "1 missing key(s)" in text and "1.bias" in text
    assert "1 unexpected key(s)" in text and "2.weight" in text
    assert "0.weight: file [5, 3] vs model [4, 3]" in text


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_build_dtype_conversion(st_file, dtype):
    raw = read_state_dict(st_file)
    model = build(lambda: _WithBN(), {"lin.weight": raw["a.weight"], "lin.bias": raw["a.bias"],
                                      "bn.running_mean": torch.zeros(4), "bn.running_var": torch.ones(4),
                                      "bn.num_batches_tracked": raw["bn.num_batches_tracked"]}, dtype=dtype)
    assert model.lin.weight.dtype == dtype and model.bn.running_var.dtype == dtype
    assert model.bn.num_batches_tracked.dtype == torch.long
    assert torch.equal(model.lin.weight, raw["a.weight"].to(dtype))


class _WithBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4, affine=False)


def _tiny_stage_b_state() -> dict[str, torch.Tensor]:
    from cascadekit.codec.models.stage_b import StageB, StageBConfig

    torch.manual_seed(0)
    return StageB.from_config(StageBConfig.preset("tiny")).state_dict()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_load_weights_dtype(tmp_path, dtype):
    sd = _tiny_stage_b_state()
    p = tmp_path / "stage_b_lite.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    got = load_weights(p, dtype=dtype, kind="stage_b")
    assert got.keys() == sd.keys()
    assert all(v.dtype == dtype for v in got.values())
    k = "clip_mapper.weight"
    assert torch.equal(got[k], sd[k].to(dtype))
    with pytest.raises(WeightsError, match="expected stage_c"):
        load_weights(p, kind="stage_c")


def test_sharded_diffusers_folder(tmp_path):
    sd = _tiny_stage_b_state()
    d = official_to_diffusers(sd, "stage_b")
    assert "clip_txt_pooled_mapper.weight" in d and any(".attention.to_q.weight" in k for k in d)
    folder = tmp_path / "decoder_lite"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "StableCascadeUNet"}))
    keys = sorted(d)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: d[k].contiguous() for k in ks}, str(folder / name))
        weight_map.update({k: name for k in ks})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    got = load_weights(folder)
    assert got.keys() == sd.keys()
    for k in sd:
        assert torch.equal(got[k], sd[k]), k
    # the index alone also works through read_state_dict (diffusers names)
    assert read_state_dict(folder / "diffusion_pytorch_model.safetensors.index.json").keys() == d.keys()
    # a missing shard is named
    os.unlink(folder / "diffusion_pytorch_model-00002-of-00002.safetensors")
    with pytest.raises(WeightsError, match="00002-of-00002.safetensors"):
        load_weights(folder)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(WeightsError, match="no config.json"):
        load_weights(tmp_path)


def test_sha256_and_cache(st_file):
    want = hashlib.sha256(st_file.read_bytes()).hexdigest()
    assert sha256_file(st_file) == want
    assert sha256_file(st_file) == want  # cached
    with open(st_file, "ab") as f:
        f.write(b"x")  # new size -> new cache entry
    assert sha256_file(st_file) == hashlib.sha256(st_file.read_bytes()).hexdigest() != want
    with pytest.raises(WeightsError):
        sha256_file(st_file.parent)
