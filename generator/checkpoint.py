"""Training checkpoints: model weights in official Stage C key names + a resumable state.

Layout of a run folder::

    RUN_DIR/checkpoints/step_000200/
        model.safetensors     full fine-tune: Stage C weights, official keys (loadable with
                              ``StageC`` + ``load_into``); LoRA runs write ``lora.safetensors`` instead
        ema.safetensors       EMA weights (same keys as the trained tensors), when EMA is on
        state.pt              optimizer, LR scheduler, adaptive loss buckets, RNG states
                              (torch, cuda, numpy, python), data position, step, config
                              (plain tensors/containers: read with ``torch.load(weights_only=True)``)
        meta.json             step, time, what the folder holds, the size of every file (written last)
    RUN_DIR/checkpoints/latest   name of the newest complete checkpoint folder

Writes are atomic: everything goes into a hidden temporary folder that is renamed into place once
complete, then ``latest`` is replaced (:func:`~cascadekit.codec.fsio.atomic_write_text`). A crash at any
point leaves the previous checkpoint and ``latest`` intact. Older folders beyond ``keep`` are removed
only afterwards, and never a folder of a later step than the one just written. Safetensors files are
byte-reproducible (:mod:`~cascadekit.generator.training.tensorfile`).

Resuming (:func:`resume_point`) does not trust ``latest``: it takes the newest ``step_*`` folder whose
files all check out (:func:`checkpoint_problem`: sizes recorded in ``meta.json``, safetensors headers
against the file size, ``state.pt`` readable as a zip archive, ``meta.json`` parses).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from cascadekit.codec.errors import InputError, OutputError, WeightsError
from cascadekit.codec.fsio import atomic_write_text, describe_os_error
from cascadekit.generator.training.tensorfile import safetensors_problem, write_safetensors

LATEST = "latest"
META = "meta.json"
STATE = "state.pt"
FORMAT = "cascadekit-train-checkpoint-1"


class CheckpointWriteError(OutputError, OSError):
    """A checkpoint could not be written (full disk, read-only folder); the previous one is intact."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def step_of(folder: Path) -> int | None:
    """The step of a ``step_N`` folder name, None for any other name."""
    name = folder.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else None


# ---------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states, as weights_only-loadable containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------- durability
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- write
def _write_files(tmp: Path, step: int, weights: dict[str, torch.Tensor], weights_name: str,
                 metadata: dict[str, str] | None, ema: dict[str, torch.Tensor] | None, state: dict[str, Any]) -> None:
    """All files of one checkpoint into the (hidden) folder ``tmp``; meta.json last, with every size."""
    files = {weights_name: weights, **({"ema.safetensors": ema} if ema is not None else {})}
    for name, tensors in files.items():
        with open(tmp / name, "wb") as f:
            write_safetensors(f, tensors, metadata)
    torch.save(state, tmp / STATE)
    sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
    meta = {"step": step, "time": time.time(), "weights": weights_name, "ema": ema is not None,
            "format": FORMAT, "files": sizes}
    (tmp / META).write_text(json.dumps(meta, indent=2))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    weights: dict[str, torch.Tensor],
    weights_name: str = "model.safetensors",
    weights_metadata: dict[str, str] | None = None,
    ema: dict[str, torch.Tensor] | None = None,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Atomically write checkpoint ``step`` under ``run_dir/checkpoints`` and point ``latest`` at it.

    ``weights``: official-key model tensors (or LoRA factors with ``weights_name="lora.safetensors"``);
    ``state``: the resumable training state (plain tensors / python containers only).
    Returns the final checkpoint folder. A full disk or an unwritable folder raises
    :class:`CheckpointWriteError` (an OSError and an OutputError) and leaves the previous checkpoint.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_files(tmp, step, weights, weights_name, weights_metadata, ema, state)
        _replace_folder(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint and `latest` stay as they were
        raise CheckpointWriteError(describe_os_error(e, tmp) + f" (checkpoint of step {step} not written)") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, final.name + "\n")
    _fsync_dir(root)
    _prune(root, keep, step)
    return final


def _replace_folder(tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` onto ``final`` (re-saving a step, e.g. after a resume: replaced whole)."""
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)


def _prune(root: Path, keep: int, step: int) -> None:
    """Drop leftovers of cut-off writes, and the oldest folders of steps <= ``step`` beyond ``keep``.
    Folders of later steps (an intact future a run might not have started from) are never touched."""
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(p, ignore_errors=True)
    done = sorted((s, p) for p in root.iterdir() if p.is_dir() and (s := step_of(p)) is not None and s <= step)
    for _, p in done[: max(0, len(done) - keep)]:
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------- find / verify
def checkpoint_folders(run_dir: str | Path) -> list[Path]:
    """Every ``step_*`` folder of the run, newest step first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(s, p) for p in root.iterdir() if p.is_dir() and (s := step_of(p)) is not None]
    return [p for _, p in sorted(found, reverse=True)]


def holds_run(run_dir: str | Path) -> bool:
    """True when ``run_dir`` already has checkpoints (or a ``latest`` pointer) of a training run."""
    return bool(checkpoint_folders(run_dir)) or (Path(run_dir) / "checkpoints" / LATEST).exists()


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why the checkpoint ``folder`` is not intact (naming the file), or None when every file checks out."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text())
        weights_name = meta["weights"]
    except FileNotFoundError:
        return f"{folder.name}/{META} is missing (the checkpoint was never completed)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{folder.name}/{META} is damaged ({type(e).__name__}: {e})"
    if meta.get("format", FORMAT) != FORMAT:
        return f"{folder.name} has checkpoint format {meta.get('format')!r}; this cascadekit reads {FORMAT!r}"
    names = [weights_name, STATE] + (["ema.safetensors"] if meta.get("ema") else [])
    for name, size in (meta.get("files") or {}).items():
        actual = (folder / name).stat().st_size if (folder / name).is_file() else None
        if actual != size:
            return f"{folder.name}/{name} is {'missing' if actual is None else f'{actual} bytes'}, " \
                   f"the checkpoint recorded {size}"
    for name in names:
        if name.endswith(".safetensors"):
            problem = safetensors_problem(folder / name)
            if problem:
                return f"{folder.name}/{problem}"
    try:
        with zipfile.ZipFile(folder / STATE) as z:
            z.infolist()
    except FileNotFoundError:
        return f"{folder.name}/{STATE} is missing"
    except (OSError, zipfile.BadZipFile) as e:
        return f"{folder.name}/{STATE} is truncated or damaged ({e})"
    return None


def resume_point(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """(the newest intact checkpoint folder or None, why each newer folder was passed over)."""
    skipped = []
    for folder in checkpoint_folders(run_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append(problem)
    return None, skipped


def run_checkpoint(path: str | Path, what: str = "training run") -> Path:
    """``path`` unchanged, or, when it is a run folder (it has ``checkpoints/``), the run's newest intact
    checkpoint folder by :func:`resume_point` (the ``latest`` pointer is not trusted: a run whose ``latest`` was
    removed, or whose newest checkpoint is damaged, still loads). What sampling, ``--stage-b-weights`` and
    ``--controlnet`` use. InputError naming ``what`` and why each folder was passed over when there is none."""
    p = Path(path)
    if not (p.is_dir() and (p / "checkpoints").is_dir()):
        return p
    folder, skipped = resume_point(p)
    if folder is None:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise InputError(f"{what} {p} has no intact checkpoint yet{why}")
    return folder


def checkpoint_holds(folder: Path) -> tuple[str, bool]:
    """(the weights file name recorded in the checkpoint's meta.json, '' if none; whether it kept EMA weights)."""
    meta = json.loads((Path(folder) / META).read_text())
    return str(meta.get("weights", "")), bool(meta.get("ema"))


def checkpoint_weights(folder: Path, ema: bool = False, refuse: Callable[[str], str | None] | None = None) -> Path:
    """The file to load from a checkpoint folder: the EMA file with ``ema`` (InputError when the run kept none),
    else the weights file recorded in meta.json. ``refuse(name)`` (checked first) may return why a checkpoint
    holding ``name`` is the wrong kind for the caller (raised as InputError)."""
    name, has_ema = checkpoint_holds(folder)
    why = refuse(name) if refuse is not None else None
    if why:
        raise InputError(why)
    if ema and not has_ema:
        raise InputError(f"checkpoint {folder} has no EMA weights (the run had ema_decay unset)")
    return folder / ("ema.safetensors" if ema else name)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder ``latest`` points at, or None if the run has no complete checkpoint yet."""
    root = Path(run_dir) / "checkpoints"
    ptr = root / LATEST
    if not ptr.is_file():
        return None
    folder = root / ptr.read_text().strip()
    if not (folder / STATE).is_file():
        raise InputError(f"{ptr} points at {folder.name}, which is missing or incomplete; "
                         "remove the 'latest' file to start over, or point it at an intact step_* folder")
    return folder


# ---------------------------------------------------------------------- read
def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Read a checkpoint folder: {"weights", "weights_name", "ema" (or None), "state", "meta"}."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    try:
        weights = load_file(str(folder / meta["weights"]))
        ema = load_file(str(folder / "ema.safetensors")) if meta.get("ema") else None
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"checkpoint {folder} cannot be read ({e}); resume from an older step_* folder") from e
    return {"weights": weights, "weights_name": meta["weights"], "ema": ema, "state": state, "meta": meta}


def load_state(folder: str | Path) -> dict[str, Any]:
    """Only the resumable training state (``state.pt``) of a checkpoint folder."""
    folder = Path(folder)
    try:
        return torch.load(folder / STATE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"checkpoint {folder} cannot be read ({e}); resume from an older step_* folder") from e
