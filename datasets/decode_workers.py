"""Image decoding for a build, in DataLoader worker processes: each task becomes one batch of uint8 images
plus its per-row keys, captions, sizes and skip reasons (a bad image is a reason, never an exception)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cascadekit.codec.errors import CascadeKitError, InputError
from cascadekit.datasets.buckets import group_hw
from cascadekit.datasets.plan import Sample
from cascadekit.datasets.preprocess import PreprocessConfig, load_and_prepare
from cascadekit.datasets.sources import SampleReader
from cascadekit.datasets.tasks import Task


class TaskDataset(IterableDataset):
    """Yields one decoded batch per task; DataLoader workers take contiguous runs of tasks."""

    def __init__(self, tasks: Sequence[Task], plan: Sequence[Sample], groups: dict, cfg: PreprocessConfig):
        self.tasks = tasks
        self.plan = plan
        self.groups = groups
        self.cfg = cfg

    def __iter__(self):
        info = get_worker_info()
        n = len(self.tasks)
        lo, hi = 0, n
        if info is not None:
            lo, hi = n * info.id // info.num_workers, n * (info.id + 1) // info.num_workers
        reader = SampleReader(self.cfg.max_input_bytes)
        try:
            for k in range(lo, hi):
                t = self.tasks[k]
                yield load_task(t, t.samples(self.plan, self.groups), self.cfg, reader)
        finally:
            reader.close()


def load_task(t: Task, samples: Sequence[Sample], cfg: PreprocessConfig, reader: SampleReader) -> dict:
    """Decode a task's images (``samples``: its planned samples, row order). Bad samples become
    ``ok=False`` with a reason; never raises for them."""
    h, w = (cfg.resolution, cfg.resolution) if not t.group else group_hw(t.group, cfg)
    n = len(t.rows)
    ok = np.zeros(n, bool)
    reasons, captions = [""] * n, [""] * n
    has_caption = np.zeros(n, bool)
    orig = np.zeros((n, 2), np.int32)
    images = []
    for i, s in enumerate(samples):
        if s.error is not None:
            reasons[i] = s.error
            continue
        try:
            src, cap = reader.fetch(s)
            if cap is not None:
                captions[i], has_caption[i] = cap, True
            arr, (oh, ow) = load_and_prepare(src, cfg, s.source)
            if arr.shape[1:] != (h, w):
                raise InputError(f"{s.source}: prepared to {arr.shape[1:]}, expected {(h, w)}")
            orig[i] = (oh, ow)
            images.append(arr)
            ok[i] = True
        except CascadeKitError as e:
            reasons[i] = getattr(e, "reason", None) or "unreadable"
        except Exception:  # noqa: BLE001 - whatever a broken file does, the job goes on
            reasons[i] = "unreadable"
    imgs = torch.from_numpy(np.stack(images)) if images else torch.zeros((0, 3, h, w), dtype=torch.uint8)
    return {
        "group": t.group,
        "rows": torch.tensor(t.rows, dtype=torch.int64),
        "ok": torch.from_numpy(ok),
        "images": imgs,  # (n_ok, 3, H, W) uint8
        "keys": [s.key for s in samples],
        "sources": [s.source for s in samples],
        "captions": captions,
        "has_caption": torch.from_numpy(has_caption),
        "orig_size": torch.from_numpy(orig),
        "reasons": reasons,
    }


def collate_identity(x):
    """DataLoader collate for items that are already whole batches (module-level: workers pickle it)."""
    return x


__all__ = ["TaskDataset", "collate_identity", "load_task"]
