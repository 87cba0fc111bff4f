"""Atomic writes and advisory locks (codec/fsio.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cascadekit.codec.errors import OutputError
from cascadekit.codec.fsio import AdvisoryLock, LockedError, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    atomic_write_text(p, "second\n")
    assert p.read_text() == "second\n"
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("interrupted")

    from cascadekit.codec.fsio import atomic_write
    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_atomic_write_into_missing_folder_is_output_error(tmp_path):
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write_text(tmp_path / "missing" / "a.txt", "x")


def test_lock_refuses_second_holder_and_names_it(tmp_path):
    code = ("import sys,time; from cascadekit.codec.fsio import AdvisoryLock; "
            f"l=AdvisoryLock({str(tmp_path)!r}, 'latent store').acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"latent store .* in use by another process \(pid {proc.pid} "):
            AdvisoryLock(tmp_path, "latent store").acquire()
    finally:
        proc.kill()
        proc.wait()
    # the holder died: its lock is gone with it (stale lock recovered)
    with AdvisoryLock(tmp_path, "latent store") as lock:
        assert lock.held
    assert not lock.held
