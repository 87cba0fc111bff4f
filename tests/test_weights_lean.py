"""Memory-lean, exact checkpoint loading.

* A ~160 MB synthetic Stage B checkpoint is loaded the way the project loads weights
  (``load_weights`` -> ``build`` on the meta device) in a fresh process; the peak RSS growth must stay
  within 1.2x the loaded weights (+ a small constant), and every tensor must be bit-exact.
* Loaded weights are owned memory: changing the file afterwards does not change them.
* The reader returns exactly what ``safetensors`` wrote, for every dtype, 0-d and empty tensors,
  and rejects overlapping/gapped tensor offsets.
"""
from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cascadekit.codec.errors import WeightsError
from cascadekit.codec.weights import read_state_dict

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_load.py"
# 78M parameters: a 156 MB bf16 file, a 312 MB float32 model
MID_CONFIG = {"c_hidden": [160, 320, 640, 640], "nhead": [-1, -1, 8, 8], "c_cond": 512, "c_clip": 512,
              "blocks": [[1, 2, 4, 2], [2, 4, 2, 1]], "block_repeat": [[1, 1, 1, 1], [1, 1, 1, 1]]}
SLACK = 32 * 2**20  # allocator / Python objects / the meta model


def _bench():
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mid_bf16_file(tmp_path_factory) -> Path:
    bench = _bench()
    path = tmp_path_factory.mktemp("lean") / "stage_b_mid_bf16.safetensors"
    bench.write_synthetic(path, bench.stage_b_specs(config=MID_CONFIG), torch.bfloat16)
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.parametrize("model_dtype", ["bf16", "fp32"])
def test_peak_rss_growth_within_1_2x_of_the_weights(mid_bf16_file, model_dtype):
    cmd = [sys.executable, str(BENCH), "--child", str(mid_bf16_file), "--config", json.dumps(MID_CONFIG),
           "--file-dtype", "bf16", "--model-dtype", model_dtype, "--convert-at", "read", "--check", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # includes the bit-exact check of every tensor
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    size = mid_bf16_file.stat().st_size
    data = size - _header_bytes(mid_bf16_file)
    assert res["params"] * 2 == data and res["checked_tensors"] == 314
    assert res["model_bytes"] == data * (2 if model_dtype == "fp32" else 1)
    growth = res["peak_rss"] - res["baseline_rss"]
    # bf16 -> bf16: the model is the file (<= 1.2x file); bf16 -> fp32: the model is twice the file and
    # the bf16 source must be dropped tensor by tensor (<= 1.2x model, not file + model)
    assert growth <= 1.2 * res["model_bytes"] + SLACK, (growth / 2**20, res["model_bytes"] / 2**20)


def _header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def test_loaded_weights_do_not_alias_the_file(tmp_path):
    p = tmp_path / "w.safetensors"
    state = {"a": torch.arange(4096, dtype=torch.float32).reshape(64, 64), "b": torch.ones(3, dtype=torch.bfloat16)}
    save_file(state, str(p))
    sd = read_state_dict(p)
    head = _header_bytes(p)
    with open(p, "r+b") as f:  # overwrite the tensor data in place (a memory map would now see this)
        f.seek(head)
        f.write(b"\xff" * (p.stat().st_size - head))
    for k, v in state.items():
        assert torch.equal(sd[k], v), k
    sd["a"].add_(1)  # owned and writable
    assert sd["a"][0, 0].item() == 1.0


def test_reader_matches_safetensors_for_every_dtype(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g)
    state = {
        "f32": x, "f16": x.half(), "bf16": x.bfloat16(), "f64": x.double(), "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4), "i64": torch.arange(-5, 5), "i32": torch.arange(9, dtype=torch.int32),
        "i16": torch.arange(-3, 3, dtype=torch.int16), "i8": torch.arange(-4, 4, dtype=torch.int8),
        "u8": torch.arange(250, 256, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "c64": torch.complex(x[0], x[1]), "f8e4m3": x.to(torch.float8_e4m3fn), "f8e5m2": x.to(torch.float8_e5m2),
        "z_odd": x[:3, :3].contiguous(),
    }
    p = tmp_path / "all.safetensors"
    save_file(state, str(p))
    sd = read_state_dict(p)
    with safe_open(str(p), "pt") as f:
        assert list(sd) == list(f.keys())  # same (sorted) key order as safetensors
    for k, v in state.items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape, k
        if v.numel():  # bit-exact, whatever the dtype
            assert torch.equal(sd[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k


def _raw_file(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("offsets, data", [([[0, 4], [0, 4]], 4), ([[0, 4], [8, 12]], 12), ([[4, 8], [8, 12]], 12)],
                         ids=["overlap", "gap", "hole-at-start"])
def test_overlapping_or_gapped_offsets_are_corrupt(tmp_path, offsets, data):
    header = {n: {"dtype": "F32", "shape": [1], "data_offsets": o} for n, o in zip("ab", offsets)}
    p = _raw_file(tmp_path / "bad.safetensors", header, b"\0" * data)
    with pytest.raises(WeightsError, match="overlapping or gapped"):
        read_state_dict(p)


def test_negative_dimensions_are_corrupt(tmp_path):
    p = _raw_file(tmp_path / "neg.safetensors", {"a": {"dtype": "F32", "shape": [-1, -2], "data_offsets": [0, 8]}},
                  b"\0" * 8)
    with pytest.raises(WeightsError, match="malformed header entry"):
        read_state_dict(p)
