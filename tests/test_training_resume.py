"""Hardening of `train` (issue 16): resume after `latest` was removed or a checkpoint was damaged, --resume with
nothing to resume, intact checkpoints never deleted, one log history, damaged run.json, the run-folder lock,
config input errors (--set YAML, empty config, seed range), byte-identical checkpoint files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from generator_helpers import FixedEmpty, tiny_store

from cascadekit.codec.errors import InputError
from cascadekit.codec.fsio import AdvisoryLock, LockedError
from cascadekit.generator import checkpoint as ckpt
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.train import train

QUIET = dict(log=lambda m: None)


def cfg(**kw) -> TrainConfig:
    base = dict(model="tiny", batch_size=4, steps=6, lr=2e-3, warmup_steps=2, log_every=1, save_every=2,
                keep_checkpoints=3)
    return TrainConfig.from_dict({**base, **kw})


def run(store, out, **kw):
    c = kw.pop("config", cfg())
    return train(store, c, out, text_encoder=FixedEmpty(), **QUIET, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tiny_store(tmp_path_factory.mktemp("resume_store") / "s.zarr", n=8)


@pytest.fixture(scope="module")
def straight(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    return ckpt.load_checkpoint(run(store, out).last_checkpoint)


def _steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_latest_takes_the_newest_intact_checkpoint(tmp_path, store, straight):
    out = tmp_path / "run"
    run(store, out, stop_after=4)  # checkpoints 2 and 4
    (out / "checkpoints" / ckpt.LATEST).unlink()  # as the old error message advised
    with pytest.raises(InputError, match="already holds a training run"):  # never a silent fresh start
        run(store, out)
    step2 = (out / "checkpoints" / "step_000002" / "model.safetensors").read_bytes()
    res = run(store, out, resume=True)
    assert [h["step"] for h in res.history] == [5, 6]  # continued from step 4, not from 0
    assert _same_weights(ckpt.load_checkpoint(res.last_checkpoint)["weights"], straight["weights"])
    assert (out / "checkpoints" / "step_000002" / "model.safetensors").read_bytes() == step2  # untouched
    assert _steps_logged(out) == [1, 2, 3, 4, 5, 6]  # one history


@pytest.mark.parametrize("damage", ["model.safetensors", "state.pt", "meta.json", "ema-size"])
def test_a_damaged_newest_checkpoint_is_passed_over_with_its_file_named(tmp_path, store, straight, damage):
    out = tmp_path / "run"
    run(store, out, stop_after=4)
    newest = out / "checkpoints" / "step_000004"
    name = "model.safetensors" if damage == "ema-size" else damage
    f = newest / name
    if damage == "ema-size":  # the recorded size no longer matches (a file replaced by another)
        f.write_bytes(f.read_bytes() + b"\0" * 8)
    else:
        f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 2)])
    logs = []
    res = train(store, cfg(), out, resume=True, text_encoder=FixedEmpty(), log=logs.append)
    assert any("damaged" in m and name in m and "step_000004" in m for m in logs), logs
    assert [h["step"] for h in res.history] == [3, 4, 5, 6]  # from step 2
    assert _same_weights(ckpt.load_checkpoint(res.last_checkpoint)["weights"], straight["weights"])
    assert _steps_logged(out) == [1, 2, 3, 4, 5, 6]


def test_no_intact_checkpoint_or_nothing_to_resume_is_an_error(tmp_path, store):
    with pytest.raises(InputError, match="no checkpoint to resume"):
        run(store, tmp_path / "empty", resume=True)
    assert not (tmp_path / "empty" / "checkpoints").exists()
    out = tmp_path / "run"
    run(store, out, stop_after=2)
    model = out / "checkpoints" / "step_000002" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(InputError, match=r"no intact checkpoint[\s\S]*step_000002/model.safetensors is (truncated|100 bytes)"):
        run(store, out, resume=True)
    assert model.stat().st_size == 100  # nothing was deleted or rewritten


def test_a_truncated_run_json_is_named(tmp_path, store):
    out = tmp_path / "run"
    run(store, out, stop_after=2)
    (out / "run.json").write_text((out / "run.json").read_text()[:40])
    with pytest.raises(InputError, match=r"run\.json is damaged or truncated"):
        run(store, out, resume=True)


def test_checkpoints_of_later_steps_are_never_pruned(tmp_path):
    w = {"a": torch.arange(4.0)}
    for s in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, s, weights=w, state={"step": s}, keep=3)
    ckpt.save_checkpoint(tmp_path, 3, weights=w, state={"step": 3}, keep=1)  # a run restarted from an older one
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_000003", "step_000004", "step_000006"]


def test_the_run_folder_is_locked(tmp_path, store):
    out = tmp_path / "run"
    out.mkdir()
    with AdvisoryLock(out, "training run"):  # another process training into the same folder
        with pytest.raises(LockedError, match="training run .* in use by another process"):
            run(store, out)
    assert not (out / "checkpoints").exists()
    res = run(store, out, config=cfg(steps=1, save_every=1))  # released: the folder is usable again
    assert res.step == 1
    AdvisoryLock(out, "training run").acquire().release()  # and the finished run released it


def test_checkpoint_files_are_byte_identical_for_identical_weights(tmp_path, store):
    a = run(store, tmp_path / "a", config=cfg(steps=2, save_every=2, ema_decay=0.5))
    b = run(store, tmp_path / "b", config=cfg(steps=2, save_every=2, ema_decay=0.5))
    for name in ("model.safetensors", "ema.safetensors"):
        assert (a.last_checkpoint / name).read_bytes() == (b.last_checkpoint / name).read_bytes()
    meta = {"model": "StageC/tiny", "format": "pt", "b": "1"}
    w = {"z": torch.ones(3), "y": torch.zeros(2, dtype=torch.float16)}
    for i, order in enumerate((list(meta), list(reversed(meta)))):
        ckpt.save_checkpoint(tmp_path / f"m{i}", 1, weights=w, weights_metadata={k: meta[k] for k in order},
                             state={"step": 1})
    files = [(tmp_path / f"m{i}" / "checkpoints" / "step_000001" / "model.safetensors").read_bytes() for i in (0, 1)]
    assert files[0] == files[1]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m0" / "checkpoints" / "step_000001" / "model.safetensors"), "pt") as f:
        assert f.metadata() == meta and torch.equal(f.get_tensor("y"), w["y"])


# ---------------------------------------------------------------------------- config input errors
def test_empty_config_files_are_errors(tmp_path):
    for name, text in (("e.yaml", ""), ("c.yaml", "# only a comment\n"), ("e.toml", ""), ("e.json", "{}")):
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match="is empty"):
            TrainConfig.from_file(tmp_path / name)


@pytest.mark.parametrize("seed", [-1, 2**63, 2**70, 1.5, True])
def test_seed_range_is_validated(seed):
    with pytest.raises(InputError, match=r"seed must be an integer with 0 <= seed < 2\*\*63"):
        TrainConfig.from_dict({"model": "tiny", "seed": seed})
    assert TrainConfig.from_dict({"model": "tiny", "seed": 2**63 - 1}).seed == 2**63 - 1


def _cli(args):
    from cascadekit.cli.main import main

    return CliRunner().invoke(main, ["train", *args])


@pytest.mark.parametrize("sets, msg", [
    (["steps=[1,"], "--set 'steps=[1,': the value is not valid YAML"),
    (["steps"], "--set expects KEY=VALUE"),
    (["seed=1180591620717411303424"], "seed must be an integer with 0 <= seed < 2**63"),
])
def test_cli_set_errors_name_the_flag(tmp_path, store, sets, msg):
    args = ["--data", str(store), "--config", "tiny", "--out", str(tmp_path / "run")]
    for s in sets:
        args += ["--set", s]
    r = _cli(args)
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def test_cli_resume_with_nothing_and_empty_config(tmp_path, store):
    r = _cli(["--data", str(store), "--config", "tiny", "--out", str(tmp_path / "run"), "--resume",
              "--set", "caption_dropout=0"])
    assert r.exit_code == 2 and "no checkpoint to resume" in r.output and "Traceback" not in r.output
    (tmp_path / "empty.yaml").write_text("")
    r = _cli(["--data", str(store), "--config", str(tmp_path / "empty.yaml"), "--out", str(tmp_path / "run2")])
    assert r.exit_code == 2 and "is empty" in r.output
    assert not list((tmp_path).glob("run*/checkpoints"))


def test_cli_damaged_checkpoint_everywhere_is_one_message(tmp_path, store):
    out = tmp_path / "run"
    run(store, out, config=cfg(caption_dropout=0), stop_after=2)
    shutil.rmtree(out / "checkpoints" / "step_000002")
    (out / "checkpoints" / "step_000002").mkdir()  # an empty folder where the checkpoint was
    r = _cli(["--data", str(store), "--config", "tiny", "--out", str(out), "--resume", "--set", "steps=6",
              "--set", "save_every=2", "--set", "lr=0.002", "--set", "log_every=1", "--set", "keep_checkpoints=3", "--set", "caption_dropout=0"])
    assert r.exit_code == 2 and "step_000002/meta.json is missing" in r.output and "Traceback" not in r.output


def test_a_checkpoint_written_before_the_split_still_resumes(tmp_path, store, straight):
    """Old checkpoints: meta.json without file sizes, safetensors written by the safetensors library."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    run(store, out, stop_after=4)
    folder = out / "checkpoints" / "step_000004"
    meta = json.loads((folder / "meta.json").read_text())
    del meta["files"]
    (folder / "meta.json").write_text(json.dumps(meta))
    save_file(load_file(str(folder / "model.safetensors")), str(folder / "model.safetensors"),
              metadata={"format": "pt", "model": "StageC/tiny"})
    assert ckpt.checkpoint_problem(folder) is None
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "meta.json").write_text(json.dumps({**meta, "format": "cascadekit-train-checkpoint-9"}))
    assert "checkpoint format 'cascadekit-train-checkpoint-9'" in ckpt.checkpoint_problem(tmp_path / "future")
    res = run(store, out, resume=True)
    assert [h["step"] for h in res.history] == [5, 6]
    assert _same_weights(ckpt.load_checkpoint(res.last_checkpoint)["weights"], straight["weights"])


def test_unwritable_out_and_a_full_disk_are_clear_errors(tmp_path, store, monkeypatch):
    import errno

    from cascadekit.codec.errors import OutputError

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError, match="a path component is a file"):
        run(store, tmp_path / "file" / "run")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    run(store, out, stop_after=2)
    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(ckpt.CheckpointWriteError, match="the disk is full") as e:
        run(store, out, resume=True)
    assert isinstance(e.value, OutputError) and "step 4" in str(e.value)
    monkeypatch.undo()
    assert ckpt.resume_point(out)[0].name == "step_000002"  # the previous checkpoint is intact
    assert not list((out / "checkpoints").glob(".tmp-*"))
