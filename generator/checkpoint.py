"""Training checkpoints: model weights in official Stage C key names + a resumable state.

Layout of a run folder::

    RUN_DIR/checkpoints/step_000200/
        model.safetensors     full fine-tune: Stage C weights, official keys (loadable with
                              ``StageC`` + ``load_into``); LoRA runs write ``lora.safetensors`` instead
        ema.safetensors       EMA weights (same keys as the trained tensors), when EMA is on
        state.pt              optimizer, LR scheduler, adaptive loss buckets, RNG states
                              (torch, cuda, numpy, python), data position, step, config
                              (plain tensors/containers: read with ``torch.load(weights_only=True)``)
        meta.json             step, time, what the folder holds
    RUN_DIR/checkpoints/latest   name of the newest complete checkpoint folder

Writes are atomic: everything goes into a hidden temporary folder that is renamed into place once
complete, then ``latest`` is replaced (tmp file + rename). A crash at any point leaves the previous
checkpoint and ``latest`` intact. Older folders beyond ``keep`` are removed only afterwards.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cascadekit.codec.errors import InputError, WeightsError

LATEST = "latest"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


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


# ---------------------------------------------------------------------- write / read
def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


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
    Returns the final checkpoint folder.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _save_safetensors(weights, tmp / weights_name, weights_metadata)
        if ema is not None:
            _save_safetensors(ema, tmp / "ema.safetensors", weights_metadata)
        torch.save(state, tmp / "state.pt")
        meta = {"step": step, "time": time.time(), "weights": weights_name, "ema": ema is not None,
                "format": "cascadekit-train-checkpoint-1"}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint and `latest` stay as they were
        raise
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
        old = root / f".old-{step_dir_name(step)}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync_dir(root)
    latest_tmp = root / f".{LATEST}.tmp"
    latest_tmp.write_text(final.name + "\n")
    latest_tmp.replace(root / LATEST)
    _fsync_dir(root)
    _prune(root, keep, protect=final.name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    for p in root.iterdir():  # leftovers of writes cut off by a kill
        if p.is_dir() and p.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(p, ignore_errors=True)
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for p in done[: max(0, len(done) - keep)]:
        if p.name != protect:
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder ``latest`` points at, or None if the run has no complete checkpoint yet."""
    root = Path(run_dir) / "checkpoints"
    ptr = root / LATEST
    if not ptr.is_file():
        return None
    folder = root / ptr.read_text().strip()
    if not (folder / "state.pt").is_file():
        raise InputError(f"{ptr} points at {folder.name}, which is missing or incomplete; "
                         "remove the 'latest' file to start over, or point it at an intact step_* folder")
    return folder


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Read a checkpoint folder: {"weights", "weights_name", "ema" (or None), "state", "meta"}."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    try:
        weights = load_file(str(folder / meta["weights"]))
        ema = load_file(str(folder / "ema.safetensors")) if meta.get("ema") else None
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"checkpoint {folder} cannot be read ({e}); resume from an older step_* folder") from e
    return {"weights": weights, "weights_name": meta["weights"], "ema": ema, "state": state, "meta": meta}


def load_state(folder: str | Path) -> dict[str, Any]:
    """Only the resumable training state (``state.pt``) of a checkpoint folder."""
    folder = Path(folder)
    try:
        return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"checkpoint {folder} cannot be read ({e}); resume from an older step_* folder") from e
