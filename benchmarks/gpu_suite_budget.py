"""The GPU suite's steps, each in its own process under a wall-clock budget (``gpu_suite.py --budget``).

A step that outlives its cap (``min(cap, budget left)``) is killed with its whole process group (decode
workers included); whatever it had reported so far is kept. A step that fails records its error and the
next step runs. A step is not started with less than ``min_start_s`` of the budget left. Each child
writes its progress to a JSON file of its own (``{"result", "done", "error"}``, rewritten atomically after
every partial result), which the parent reads when the child ends.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from cascadekit.codec.fsio import atomic_write_json


@dataclass
class Budget:
    """``total_s`` for all steps together; ``caps`` per step name (seconds); no start below ``min_start_s``."""

    total_s: float
    caps: dict[str, float] = field(default_factory=dict)
    min_start_s: float = 15.0


def run_steps(steps: Iterable[str], child_cmd: Callable[[str, Path], list[str]], budget: Budget, workdir: Path,
              on_step: Callable[[str, object, dict], None]) -> None:
    """Run each step as ``child_cmd(name, progress_file)``; call ``on_step(name, result or None, info)`` after
    each, where info = {"status": ok|partial|timeout|failed|skipped, "seconds", "cap_s", "error"?}.
    A SIGTERM (``timeout`` around the whole suite) ends the running step's process group, then this process."""
    deadline = time.monotonic() + budget.total_s
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        for name in steps:
            _run_one(name, child_cmd, budget, deadline, workdir, on_step)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _run_one(name, child_cmd, budget: Budget, deadline: float, workdir: Path, on_step) -> None:
    left = deadline - time.monotonic()
    cap = min(budget.caps.get(name, left), left)
    if cap < budget.min_start_s:
        on_step(name, None, {"status": "skipped", "reason": f"cap {cap:.0f} s < {budget.min_start_s:.0f} s "
                             f"({max(left, 0):.0f} s of the budget left)"})
        return
    progress = workdir / f"{name}.progress.json"
    t = time.monotonic()
    rc = _run_capped(child_cmd(name, progress), cap)
    result, info = _outcome(progress, rc)
    on_step(name, result, {**info, "seconds": time.monotonic() - t, "cap_s": round(cap, 1)})


def _run_capped(cmd: list[str], cap_s: float) -> int | None:
    """Exit status of ``cmd``, or None when it ran past ``cap_s`` (then its process group is killed)."""
    proc = subprocess.Popen(cmd, start_new_session=True)  # its own group: decode workers die with it
    try:
        return proc.wait(timeout=cap_s)
    except subprocess.TimeoutExpired:
        return None
    finally:  # also on SystemExit from SIGTERM: never leave a step running on the device
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the step's leftover workers too, when the step itself has ended
    except ProcessLookupError:
        pass
    proc.wait()


def _outcome(progress: Path, rc: int | None) -> tuple[object, dict]:
    """(last result or None, {"status", "error"?}) from a child's progress file and exit status."""
    state = json.loads(progress.read_text()) if progress.exists() else {}
    result, error = state.get("result"), state.get("error")
    if rc is None:
        status, error = ("partial" if result is not None else "timeout"), error or "killed at its time cap"
    elif rc == 0 and state.get("done"):
        status = "ok"
    else:
        status, error = "failed", error or f"exit status {rc} before reporting"
    return result, ({"status": status} | ({"error": error} if error else {}))


def write_progress(path: Path, result: object, done: bool, error: str | None = None) -> None:
    """A child's progress file (atomic: a kill never leaves half a file)."""
    atomic_write_json(path, {"result": result, "done": done, "error": error})
