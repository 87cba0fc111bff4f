"""benchmarks/gpu_suite.py: imports, refuses to run without CUDA, and its --dry-run (tiny configs, CPU) runs every part."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_cuda_it_exits_with_a_message(capsys, monkeypatch):
    suite = _suite()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert suite.main(["--out", "/nonexistent/never-written.json"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_dry_run_runs_every_part(tmp_path):
    pytest.importorskip("torchvision")
    suite = _suite()
    out = tmp_path / "suite.json"
    assert suite.main(["--dry-run", "--no-compile", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert set(rep["seconds"]) == {"encode", "forward", "sampling", "train"}
    assert rep["encode"]["img_per_s"] > 0 and rep["encode"]["routes"]["gpu"] > 0  # baseline JPEGs took the batch route
    assert {r["stage"] for r in rep["forward"]} == {"b", "c"}
    assert all(r["forward_gflop"] > 0 and r["flop_rate_over_sgemm"] > 0 for r in rep["forward"])
    assert rep["sampling"][0]["latency_s"] > 0 and rep["train"]["samples_per_s"] > 0
