"""benchmarks/gpu_suite.py: imports, refuses to run without CUDA, its --dry-run (tiny configs, CPU) runs every
part, --budget runs steps in capped processes (kill, failure, skip), and the targets are judged."""
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


CHILDREN = {  # step -> a child's behaviour (argv[1] is its progress file)
    "ok": "json.dump({'result': {'n': 1}, 'done': True}, open(sys.argv[1], 'w'))",
    "slow": "json.dump({'result': {'n': 2}, 'done': False}, open(sys.argv[1], 'w')); time.sleep(60)",
    "hangs": "time.sleep(60)",
    "fails": "sys.exit(3)",
}


def test_budget_caps_kill_fail_and_skip_steps(tmp_path):
    import sys

    suite = _suite()  # gpu_suite imports its sibling gpu_suite_budget
    seen = {}

    def child(name, progress):
        script = "import json, sys, time; " + CHILDREN.get(name, "pass")
        return [sys.executable, "-I", "-S", "-c", script, str(progress)]  # -I -S: no site, starts fast

    caps = {"slow": 1.5, "hangs": 1.5, "late": 0.01}
    suite.run_steps(["ok", "slow", "hangs", "fails", "late"], child, suite.Budget(120, caps, min_start_s=0.1),
                     tmp_path, lambda name, result, info: seen.update({name: (result, info)}))
    assert seen["ok"] == ({"n": 1}, {"status": "ok", "seconds": seen["ok"][1]["seconds"], "cap_s": 120})
    assert seen["slow"][0] == {"n": 2} and seen["slow"][1]["status"] == "partial"  # killed, partial result kept
    assert seen["hangs"][0] is None and seen["hangs"][1]["status"] == "timeout"
    assert 1.4 < seen["hangs"][1]["seconds"] < 30
    assert seen["fails"][1]["status"] == "failed" and "exit status 3" in seen["fails"][1]["error"]
    assert seen["late"] == (None, {"status": "skipped", "reason": seen["late"][1]["reason"]})


def test_targets_are_judged_against_the_measured_numbers():
    suite = _suite()
    report = {"settings": {"dry_run": False}, "encode": {"img_per_s": 3000.0}, "total_seconds": 500.0,
              "forward_compiled": [{"stage": "c", "ratio_ours_over_diffusers": 0.8}, {"stage": "b"}]}
    rows = {r["what"].split(":")[0]: r for r in suite.target_rows(report)}
    assert rows["encode"]["met"] is True and rows["forward_compiled"]["met"] is False
    assert rows["whole suite, seconds"]["met"] is False and rows["forward_compiled"]["target"] == "<= 0.7"
    report["settings"]["dry_run"] = True
    assert all(r["met"] is None for r in suite.target_rows(report))  # a dry run is never judged


def test_budget_runs_a_dry_step_in_its_own_process(tmp_path):
    suite = _suite()
    out = tmp_path / "suite.json"
    assert suite.main(["--dry-run", "--no-compile", "--parts", "train", "--budget", "300", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["steps"]["train"]["status"] == "ok" and rep["train"]["samples_per_s"] > 0
    assert rep["train"]["compile"] is False and [r["what"] for r in rep["targets"]] == ["whole suite, seconds"]
