"""Image decoding for a build: each task becomes one batch of uint8 images plus its per-row keys, captions,
sizes and skip reasons (a bad image is a reason, never an exception). Decoded in DataLoader worker processes
(:class:`TaskDataset`) or, for a CPU encoder that fills every core, on threads of the main process between
encoder calls (:class:`DecodeThreads`). With ``device_jpeg`` baseline JPEGs stay bytes for the main process
(:mod:`.device_decode`)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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
        lo, hi = self.run_of(info.id, info.num_workers) if info is not None else (0, len(self.tasks))
        reader = SampleReader(self.cfg.max_input_bytes)
        try:
            for k in range(lo, hi):
                yield self.decode(k, reader)
        finally:
            reader.close()

    def run_of(self, j: int, runs: int) -> tuple[int, int]:
        """Tasks ``lo..hi-1`` of decoder ``j`` of ``runs``: contiguous, so a tar shard is streamed forward once."""
        n = len(self.tasks)
        return n * j // runs, n * (j + 1) // runs

    def decode(self, k: int, reader: SampleReader, samples: Sequence[Sample] | None = None) -> dict:
        """Task ``k`` decoded with ``reader`` (``samples``: its planned samples when already read)."""
        t = self.tasks[k]
        samples = t.samples(self.plan, self.groups) if samples is None else samples
        return load_task(t, samples, self.cfg, reader, self.device_jpeg)


class DecodeThreads:
    """A :class:`TaskDataset`'s batches decoded on ``threads`` threads of this process, one task per thread
    at a time, and only while the consumer waits for its next batch.

    For a CPU encoder whose threads fill every core: a decode process running alongside takes a core from
    one of the encoder's threads and stalls the other at its next barrier (its decoding was added to the
    encoder's wall time about one to one), while decoding between encoder calls adds at most its CPU time,
    less as the threads run in parallel (PIL releases the GIL while it decodes and resizes). Batches come in the order DataLoader workers give them (thread ``j`` owns the
    contiguous run :meth:`TaskDataset.run_of`, taken round-robin); each thread has its own
    :class:`SampleReader`; the plan is read here, not on the threads.
    """

    def __init__(self, ds: TaskDataset, threads: int):
        self.ds = ds
        self.threads = max(1, int(threads))

    def __iter__(self):
        runs = min(self.threads, len(self.ds.tasks))
        spans = [self.ds.run_of(j, runs) for j in range(runs)]
        readers = [SampleReader(self.ds.cfg.max_input_bytes) for _ in spans]
        try:
            with ThreadPoolExecutor(max(1, runs), thread_name_prefix="cascadekit-decode") as pool:
                for k0 in range(max((hi - lo for lo, hi in spans), default=0)):
                    ks = [(lo + k0, r) for (lo, hi), r in zip(spans, readers) if lo + k0 < hi]
                    jobs = [pool.submit(self.ds.decode, k, r, self.ds.tasks[k].samples(self.ds.plan, self.ds.groups))
                            for k, r in ks]
                    yield from [f.result() for f in jobs]  # all done before the first is handed out
        finally:
            for r in readers:
                r.close()


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


__all__ = ["DecodeThreads", "TaskDataset", "collate_identity", "load_task"]
