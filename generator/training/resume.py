"""Starting a run or resuming one: which checkpoint, and whether the config may continue it.

* a run folder that already holds checkpoints needs ``--resume`` (no run is ever silently restarted
  over another one);
* ``--resume`` takes the newest INTACT checkpoint (every file verified, see
  :func:`~cascadekit.generator.checkpoint.resume_point`), saying which newer folders were damaged; with no
  intact checkpoint it refuses (it never falls back to a fresh start);
* the fields of the config's dataclass that are not marked changeable must equal those in ``run.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from cascadekit.codec.errors import InputError
from cascadekit.generator import checkpoint as ckpt
from cascadekit.generator.training.settings import CoreConfig, resume_changes

RUN_JSON = "run.json"


def read_run_json(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``run.json`` (None when absent); a damaged file is an InputError naming it."""
    p = Path(run_dir) / RUN_JSON
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict):
            raise ValueError("no 'config' mapping")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{p} is damaged or truncated ({e}); the run's config cannot be checked. Restore it "
                         f"from a backup, or train into a new --out folder") from None
    return rec


def choose_start(run_dir: Path, resume: bool, log: Callable[[str], None]) -> Path | None:
    """The checkpoint folder to resume from (``resume``), or None for a new run in an unused folder."""
    if not resume:
        if ckpt.holds_run(run_dir):
            names = ", ".join(p.name for p in ckpt.checkpoint_folders(run_dir)[:3]) or "checkpoints/latest"
            raise InputError(f"{run_dir} already holds a training run ({names}); pass --resume to continue it "
                             "or choose a new --out folder")
        return None
    folder, skipped = ckpt.resume_point(run_dir)
    if folder is None:
        if skipped:
            raise InputError(f"--resume: no intact checkpoint in {run_dir / 'checkpoints'}:\n  "
                             + "\n  ".join(skipped) + "\n  (train into a new --out folder to start over)")
        raise InputError(f"--resume: {run_dir} has no checkpoint to resume (nothing was saved there yet); "
                         "leave out --resume to start a new run")
    for why in skipped:
        log(f"warning: passing over a damaged checkpoint: {why}")
    return folder


def check_same_run(recorded: dict[str, Any] | None, cfg: CoreConfig) -> None:
    """Refuse a resume whose config changes a field that is fixed on resume (see the settings module)."""
    if recorded is None:
        return
    diff = resume_changes(recorded["config"], cfg)
    if diff:
        raise InputError("--resume with a config that changes the training maths:\n  " + "\n  ".join(diff)
                         + "\n  (only steps and the log/preview/save intervals may change on resume)")
