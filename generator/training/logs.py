"""The run's scalar log: ``train_log.jsonl`` (one JSON object per logged update) and, optionally, TensorBoard.

One history per run folder: before training, lines of steps after the starting step are dropped (all of
them for a new run), so a resumed run continues the log instead of interleaving a second history.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cascadekit.codec.errors import InputError, OutputError
from cascadekit.codec.fsio import atomic_write_text, describe_os_error

LOG_FILE = "train_log.jsonl"
TB_SCALARS = ("loss", "loss_weighted", "lr", "grad_norm", "samples_per_s")


def check_tensorboard() -> None:
    """Raise InputError when ``tensorboard: true`` cannot work (before any training)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - optional dependency, checked early
    except ImportError:
        raise InputError("tensorboard: true needs the `tensorboard` package (pip install tensorboard), "
                         "or set tensorboard: false (train_log.jsonl is always written)") from None


def truncate_log(path: Path, step: int) -> None:
    """Keep only the lines of steps <= ``step`` (and drop a line cut off by a kill)."""
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue
    atomic_write_text(path, "".join(x + "\n" for x in keep))


class TrainLog:
    """Appends records to ``RUN/train_log.jsonl`` (and TensorBoard scalars with ``tensorboard=True``)."""

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool = False):
        self.path = Path(run_dir) / LOG_FILE
        if self.path.is_file():
            truncate_log(self.path, start_step)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency (checked before training)

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, rec: dict[str, Any]) -> None:
        """Append one record (a full disk or a vanished folder is an OutputError naming the log)."""
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        except OSError as e:
            raise OutputError(describe_os_error(e, self.path)) from None
        if self.tb is not None:
            for k in TB_SCALARS:
                self.tb.add_scalar(f"train/{k}", rec[k], rec["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
