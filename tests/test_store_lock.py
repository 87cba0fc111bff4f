"""The store's advisory lock: a second encode / embed-text on a store in use is refused naming the holder; the
lock of a killed process is recovered; embed-text's options fail at parse time, before any weights load."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from store_helpers import FakeText, build, images  # noqa: E402

from cascadekit.cli.embed_text import describe_result
from cascadekit.cli.main import main
from cascadekit.codec.errors import InputError
from cascadekit.codec.fsio import LockedError
from cascadekit.datasets import store as S
from cascadekit.datasets.text_embeddings import add_text_embeddings
from cascadekit.datasets.verify import verify_store

TESTS = Path(__file__).parent


def _spawn(module: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], env=env, cwd=TESTS,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_holder(store: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    lock = store / S.LOCK_NAME
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"holder exited early: {proc.communicate()}")
        try:
            info = json.loads(lock.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if info.get("pid") == proc.pid:
            return info
        time.sleep(0.05)
    raise AssertionError("the holder never took the lock")


def _stop(proc):
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def test_second_embed_text_is_refused_naming_the_holder_and_a_dead_holder_frees_it(tmp_path):
    s = tmp_path / "s.zarr"
    build(s)
    proc = _spawn("store_helpers", s, 0.3)
    try:
        _wait_for_holder(s, proc)
        with pytest.raises(LockedError, match=rf"latent store .* in use by another process \(pid {proc.pid} "):
            add_text_embeddings(s, FakeText(), progress=False)
        r = CliRunner().invoke(main, ["embed-text", str(s), "--weights", str(tmp_path / "no-weights"), "--quiet"],
                               catch_exceptions=False)
        assert r.exit_code == 2 and f"in use by another process (pid {proc.pid}" in r.output  # before weights
        assert "Traceback" not in r.output
    finally:
        _stop(proc)
    res = add_text_embeddings(s, FakeText(), progress=False, overwrite=True)  # the killed holder's lock is gone
    assert res["embedded"] > 0 and verify_store(s)["ok"]


def test_second_encode_is_refused_while_the_first_runs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k, a in images(12):
        Image.fromarray(a).save(src / f"{k}.png")
    out = tmp_path / "s.zarr"
    proc = _spawn("datasets_helpers", out, 0.5, 2, src)
    try:
        _wait_for_holder(out, proc)
        from datasets_helpers import TinyEncoder

        from cascadekit.datasets.builder import build_latent_dataset

        with pytest.raises(InputError, match=rf"in use by another process \(pid {proc.pid} "):
            build_latent_dataset([src], out, TinyEncoder(), resolution=64, batch_size=2, chunk_rows=2,
                                 num_workers=0, progress=False)
    finally:
        _stop(proc)
    from datasets_helpers import TinyEncoder

    from cascadekit.datasets.builder import build_latent_dataset

    summ = build_latent_dataset([src], out, TinyEncoder(), resolution=64, batch_size=2, chunk_rows=2,
                                num_workers=0, progress=False)  # resumes: the dead holder's lock is free
    assert summ.ok == 12 and verify_store(out)["ok"]


def test_lock_is_never_left_in_a_folder_that_is_not_a_store(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "a.png").write_bytes(b"x")
    lock, msg = S.lock_store(d)
    assert lock is None and "is not a cascadekit latent store" in msg
    assert sorted(p.name for p in d.iterdir()) == ["a.png"]


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_embed_text_batch_size_is_checked_at_parse_time(tmp_path, bad):
    s = tmp_path / "s.zarr"
    build(s, n=4)
    r = CliRunner().invoke(main, ["embed-text", str(s), "--batch-size", bad, "--weights", str(tmp_path / "none")],
                           catch_exceptions=False)
    assert r.exit_code == 2 and "--batch-size" in r.output and "Traceback" not in r.output
    assert "text_status" not in S.open_store(s)  # nothing computed, nothing marked done
    with pytest.raises(InputError, match="--batch-size must be at least 1"):
        add_text_embeddings(s, FakeText(), batch_size=0, progress=False)


def test_embed_text_says_empty_captions_and_counts_progress_in_rows(tmp_path, capsys):
    s = tmp_path / "s.zarr"
    build(s, captions=False)
    res = add_text_embeddings(s, FakeText(), batch_size=100, progress=True)
    assert res["embedded"] == 16 and res["empty"] == 16 and res["batch_size_used"] < 100
    assert describe_result(res, s) == f"embedded 16 empty captions of 16 rows into {s}"
    assert "16/16" in capsys.readouterr().err  # the bar's total is the rows processed
    assert describe_result({"embedded": 5, "empty": 1, "rows": 6}, "x") == "embedded 5 captions (1 empty) of 6 rows into x"
