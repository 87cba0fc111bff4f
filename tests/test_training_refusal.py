"""A refused training run leaves nothing behind that it created: `--resume` with nothing to resume removes the
lock file and the empty run folder it made, and keeps a folder (and lock file) that existed before."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from generator_helpers import FixedEmpty, tiny_store

from cascadekit.cli.main import main
from cascadekit.codec.errors import InputError
from cascadekit.codec.fsio import LOCK_NAME, AdvisoryLock
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.train import train

CFG = dict(model="tiny", batch_size=4, steps=2, save_every=2)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tiny_store(tmp_path_factory.mktemp("refusal_store") / "s.zarr", n=8)


def _train(store, out, **kw):
    return train(store, TrainConfig.from_dict(CFG), out, text_encoder=FixedEmpty(), log=lambda m: None, **kw)


def test_resume_with_nothing_removes_the_folders_and_lock_it_made(tmp_path, store):
    out = tmp_path / "new" / "run"
    with pytest.raises(InputError, match="no checkpoint to resume"):
        _train(store, out, resume=True)
    assert not (tmp_path / "new").exists()  # both levels it created, lock file included


def test_resume_with_nothing_keeps_what_existed(tmp_path, store):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(InputError, match="no checkpoint to resume"):
        _train(store, out, resume=True)
    assert out.is_dir() and list(out.iterdir()) == []  # its folder kept, the lock file it made removed
    AdvisoryLock(out, "training run").acquire().release()  # an earlier lock file stays where it was
    with pytest.raises(InputError, match="no checkpoint to resume"):
        _train(store, out, resume=True)
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    (out / "notes.txt").write_text("mine")
    (out / LOCK_NAME).unlink()
    with pytest.raises(InputError, match="no checkpoint to resume"):
        _train(store, out, resume=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_cli_resume_with_nothing_leaves_no_run_folder(tmp_path, store):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", str(store), "--config", "tiny", "--out", str(out), "--resume",
                                  "--set", "caption_dropout=0"],
                           catch_exceptions=False)
    assert r.exit_code == 2 and "no checkpoint to resume" in r.output
    assert not out.exists()
