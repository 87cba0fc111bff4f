"""Image decoding for a build, in DataLoader worker processes: each task becomes one batch of uint8 images
plus its per-row keys, captions, sizes and skip reasons (a bad image is a reason, never an exception).
With ``device_jpeg`` baseline JPEGs stay bytes for the main process (:mod:`.device_decode`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cascadekit.codec.errors import CascadeKitError, InputError
from cascadekit.datasets.buckets import group_hw
from cascadekit.datasets.device_decode import ROUTE_CPU, ROUTE_DEVICE, ROUTE_NONE, jpeg_for_device
from cascadekit.datasets.plan import Sample
from cascadekit.datasets.preprocess import PreprocessConfig, load_and_prepare
from cascadekit.datasets.sources import SampleReader
from cascadekit.datasets.tasks import Task


class TaskDataset(IterableDataset):
    """Yields one decoded batch per task; DataLoader workers take contiguous runs of tasks.

    ``device_jpeg``: baseline JPEGs travel as bytes for the main process to decode on the device
    (:mod:`.device_decode`); everything else is decoded here as usual.
    """

    def __init__(self, tasks: Sequence[Task], plan: Sequence[Sample], groups: dict, cfg: PreprocessConfig,
                 device_jpeg: bool = False):
        self.tasks = tasks
        self.plan = plan
        self.groups = groups
        self.cfg = cfg
        self.device_jpeg = device_jpeg

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
                yield load_task(t, t.samples(self.plan, self.groups), self.cfg, reader, self.device_jpeg)
        finally:
            reader.close()


def _prepare(src, cfg: PreprocessConfig, s: Sample, hw: tuple[int, int], device_jpeg: bool):
    """One sample -> ``(route, uint8 (3,H,W) array or JPEG bytes, (orig_h, orig_w))``; raises for a bad one."""
    if device_jpeg:
        blob, orig = jpeg_for_device(src, cfg, s.source)
        if orig is not None:
            return ROUTE_DEVICE, blob, orig
        src = blob  # read once: the CPU path decodes these bytes
    arr, orig = load_and_prepare(src, cfg, s.source)
    if arr.shape[1:] != hw:
        raise InputError(f"{s.source}: prepared to {arr.shape[1:]}, expected {hw}")
    return ROUTE_CPU, arr, orig


def load_task(t: Task, samples: Sequence[Sample], cfg: PreprocessConfig, reader: SampleReader,
              device_jpeg: bool = False) -> dict:
    """Decode a task's images (``samples``: its planned samples, row order). Bad samples become
    ``ok=False`` with a reason; never raises for them. With ``device_jpeg`` the JPEGs the device
    decodes stay bytes (``blobs``; ``route`` says which row is which, see :mod:`.device_decode`)."""
    hw = (cfg.resolution, cfg.resolution) if not t.group else group_hw(t.group, cfg)
    n = len(t.rows)
    ok, has_caption = np.zeros(n, bool), np.zeros(n, bool)
    route = np.full(n, ROUTE_NONE, np.int8)
    reasons, captions = [""] * n, [""] * n
    orig = np.zeros((n, 2), np.int32)
    images, blobs = [], []
    for i, s in enumerate(samples):
        if s.error is not None:
            reasons[i] = s.error
            continue
        try:
            src, cap = reader.fetch(s)
            if cap is not None:
                captions[i], has_caption[i] = cap, True
            route[i], data, orig[i] = _prepare(src, cfg, s, hw, device_jpeg)
            (blobs if route[i] == ROUTE_DEVICE else images).append(data)
            ok[i] = True
        except CascadeKitError as e:
            reasons[i] = getattr(e, "reason", None) or "unreadable"
        except Exception:  # noqa: BLE001 - whatever a broken file does, the job goes on
            reasons[i] = "unreadable"
    imgs = torch.from_numpy(np.stack(images)) if images else torch.zeros((0, 3, *hw), dtype=torch.uint8)
    item = {
        "group": t.group,
        "rows": torch.tensor(t.rows, dtype=torch.int64),
        "ok": torch.from_numpy(ok),
        "images": imgs,  # (rows decoded here, 3, H, W) uint8
        "keys": [s.key for s in samples],
        "sources": [s.source for s in samples],
        "captions": captions,
        "has_caption": torch.from_numpy(has_caption),
        "orig_size": torch.from_numpy(orig),
        "reasons": reasons,
    }
    if device_jpeg:
        item.update(blobs=blobs, route=torch.from_numpy(route), hw=hw)
    return item


def collate_identity(x):
    """DataLoader collate for items that are already whole batches (module-level: workers pickle it)."""
    return x


__all__ = ["TaskDataset", "collate_identity", "load_task"]
