"""The encode loop of a build: decoded batches -> encoder -> host copies -> writer thread, timed per stage.

What overlaps with what (one rank):

* DataLoader workers decode the next batches (``prefetch_factor`` 2 per worker) while the main thread
  encodes, except for a CPU encoder whose threads fill every core this process may use
  (:func:`make_source` chooses): its batches are decoded between encoder calls on one thread per
  encoder thread (:class:`~.decode_workers.DecodeThreads`). A decode process beside such an encoder
  takes a core from one encoder thread and stalls the other at the next barrier (measured: its
  decoding was added to the encoder's wall time about one to one, docs/benchmarks.md); decoding in
  the encoder's pauses adds at most the decoding's CPU time, less when the threads run in parallel
  (PIL releases the GIL while it decodes and resizes), and needs no worker start-up or IPC. On a CPU
  encoder with spare cores the workers run at a lower priority (``os.nice``);
* on CUDA the images arrive in pinned memory and go to the device without blocking; the encoder's
  outputs are copied back into pinned host buffers without blocking and a CUDA event marks the copy,
  so the main thread starts the next batch at once;
* the writer thread waits for that event, checks float16 range, assembles whole chunks, compresses and
  writes them (data first, status last) while the next batch encodes (:class:`~.writer.WriterThread`).

:class:`StageTimes` is where the main thread's wall time went (``Summary.stage_seconds``): waiting for
decoded images, the host-to-device copy, the encoder, the controls, waiting for a full writer queue,
returning memory. Their sum is the loop's wall time; the rest of a build is start-up and finalisation.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from cascadekit.datasets.decode_workers import DecodeThreads, TaskDataset, collate_identity
from cascadekit.datasets.writer import RowBatch

#: niceness added to decode workers when the encoder runs on the CPU (they share its cores)
CPU_ENCODER_WORKER_NICE = 10


@dataclass
class StageTimes:
    """Seconds of the main thread's encode loop per stage (see the module docstring)."""

    decode_wait: float = 0.0
    to_device: float = 0.0
    encode: float = 0.0
    controls: float = 0.0
    write_wait: float = 0.0
    release_memory: float = 0.0

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.perf_counter() - t0)

    def to_dict(self) -> dict:
        return asdict(self)


def lower_priority(nice: int):
    """A DataLoader ``worker_init_fn`` adding ``nice`` to the worker's niceness (module-level: picklable)."""
    return _Nice(nice)


@dataclass(frozen=True)
class _Nice:
    nice: int

    def __call__(self, worker_id: int) -> None:
        try:
            os.nice(self.nice)
        except (AttributeError, OSError):  # not on this platform / not permitted: same priority
            pass


def make_loader(ds: TaskDataset, num_workers: int, device: torch.device) -> DataLoader:
    """The decode loader: ``num_workers`` processes (0: in the main thread), pinned batches for CUDA."""
    return DataLoader(ds, batch_size=None, num_workers=num_workers, collate_fn=collate_identity,
                      pin_memory=device.type == "cuda", prefetch_factor=2 if num_workers else None,
                      persistent_workers=False,
                      worker_init_fn=lower_priority(CPU_ENCODER_WORKER_NICE)
                      if num_workers and device.type == "cpu" else None)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_source(ds: TaskDataset, num_workers: int, device: torch.device):
    """The build's decoded batches: :func:`make_loader`'s workers, or :class:`~.decode_workers.DecodeThreads`
    (one thread per encoder thread, decoding between encoder calls) when ``num_workers`` > 0 and the encoder
    is on the CPU with threads on every usable core (see the module docstring)."""
    threads = torch.get_num_threads()
    if num_workers and device.type == "cpu" and threads >= usable_cores():
        return DecodeThreads(ds, threads)
    return make_loader(ds, num_workers, device)


class HostCopies:
    """Device tensors copied to host float32 arrays; on CUDA without blocking (pinned memory + an event).

    ``array(x)`` returns a numpy array whose contents are valid once ``wait()`` returned (the writer
    thread calls it before reading); on the CPU the arrays are ready at once and ``wait`` does nothing.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._event = None

    def array(self, x: torch.Tensor) -> np.ndarray:
        x = x.float()
        if x.device.type != "cuda":
            return x.cpu().numpy()
        host = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(x, non_blocking=True)
        return host.numpy()

    def ready(self):
        """The wait function of the copies started so far (None when nothing is pending)."""
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event()
        event.record()
        return event.synchronize


def to_images(item_images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B,3,H,W) uint8 -> float in [0, 1] on ``device`` (non-blocking from pinned memory)."""
    return item_images.to(device, non_blocking=True).float().div_(255.0)


def encode_item(item: dict, job, times: StageTimes) -> RowBatch:
    """One decoded batch (``decode_workers.load_task``'s dict) through the encoder -> the writer's RowBatch.

    ``job``: the builder's job (``codec``, ``device``, ``want_a``, ``controls``, ``device_images``)."""
    ok, reasons = item["ok"].numpy(), item["reasons"]
    lat = sa = ctl = None
    copies = HostCopies(job.device)
    if ok.any():
        with times.stage("to_device"):
            if job.device_images is None:
                u8 = item["images"]
                x = to_images(u8, job.device)
            else:  # JPEGs decoded on the device now (a row may turn out unreadable: ok/reasons updated)
                u8, ok, reasons = job.device_images(item)
                x = u8.float().div_(255.0)
    if ok.any():
        with times.stage("encode"):
            lat = copies.array(job.codec.encode(x))
            if job.want_a:
                sa = copies.array(job.codec.encode_stage_a(x))
        if job.controls is not None:
            with times.stage("controls"):
                ctl = job.controls.compute(u8.cpu())
    return RowBatch(
        group=item["group"], rows=item["rows"].numpy(), ok=ok, keys=item["keys"], captions=item["captions"],
        sources=item["sources"], orig_size=item["orig_size"].numpy(), reasons=reasons, latents=lat,
        stage_a=sa, controls=ctl, ready=copies.ready() if lat is not None else None,
    )


def timed_batches(loader, times: StageTimes):
    """The loader's batches, the wait for each added to ``times.decode_wait``."""
    it = iter(loader)
    while True:
        with times.stage("decode_wait"):
            item = next(it, None)
        if item is None:
            return
        yield item


__all__ = ["CPU_ENCODER_WORKER_NICE", "HostCopies", "StageTimes", "encode_item", "lower_priority", "make_loader",
           "make_source", "timed_batches", "to_images", "usable_cores"]
