"""Chunk-owning writer: collects encoded rows until a whole row chunk is complete, then writes it.

A chunk's data arrays are written first and its ``status`` last, so a concurrent reader (or a
resumed run) never mistakes a half-written chunk for finished work. Writes run on a background
thread so encoding on the device overlaps with compression and disk I/O; a batch whose arrays are
still being copied from the device carries a ``ready`` function the writer waits on first.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cascadekit.codec.errors import PrecisionError
from cascadekit.datasets.store import STATUS_OK, STATUS_SKIPPED, writable

FP16_MAX = 65504.0


@dataclass
class RowBatch:
    """Encoded results for some rows of one sample group (all arrays indexed like ``rows``).

    ``ok`` marks rows that have latents; skipped rows carry their ``reason``.
    ``latents``/``stage_a`` hold only the ok rows, in order.
    """

    group: str
    rows: np.ndarray  # (n,) int64, global row numbers in the group
    ok: np.ndarray  # (n,) bool
    keys: list[str]
    captions: list[str]
    sources: list[str]
    orig_size: np.ndarray  # (n, 2) int32 (h, w); 0 when unknown
    reasons: list[str]
    latents: np.ndarray | None  # (n_ok, C, h, w) float32
    stage_a: np.ndarray | None = None  # (n_ok, 4, H/4, W/4) float32
    controls: dict | None = None  # control array -> (n_ok, ...) values (`encode --controls`, datasets/controls.py)
    ready: Callable[[], object] | None = None  # waits until the arrays hold their values (a CUDA copy's event)


@dataclass
class _Pending:
    start: int
    stop: int
    filled: np.ndarray
    keys: np.ndarray
    captions: np.ndarray
    sources: np.ndarray
    reasons: np.ndarray
    orig_size: np.ndarray
    status: np.ndarray
    latents: np.ndarray
    stage_a: np.ndarray | None = None
    controls: dict | None = None  # control array -> (k, ...), allocated when a batch brings controls


def check_fp16(x: np.ndarray, what: str, keys) -> None:
    """Raise :class:`PrecisionError` if float32 values would overflow / are not finite in float16."""
    if x.size == 0:
        return
    bad = ~np.isfinite(x) | (np.abs(x) > FP16_MAX)
    if bad.any():
        i = int(np.argwhere(bad.reshape(bad.shape[0], -1).any(axis=1))[0][0])
        raise PrecisionError(
            f"{what} of sample {keys[i]!r} has values outside the float16 range (|x| > {FP16_MAX:g} or NaN/inf); "
            "rebuild with --dtype float32"
        )


class ChunkWriter:
    """Assemble rows into whole chunks of one store and write them (data first, status last)."""

    def __init__(self, root, chunk_rows: int, dtype: str, on_chunk=None):
        self.root = root
        self.chunk_rows = chunk_rows
        self.dtype = np.dtype(dtype)
        self.on_chunk = on_chunk
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._groups = {}
        self.chunks_written = 0

    def _group(self, path):
        if path not in self._groups:
            self._groups[path] = self.root[path] if path else self.root
        return self._groups[path]

    def _new_pending(self, gpath: str, c: int) -> _Pending:
        g = self._group(gpath)
        n = g["status"].shape[0]
        start, stop = c * self.chunk_rows, min((c + 1) * self.chunk_rows, n)
        k = stop - start
        lat_shape = g["latents"].shape[1:]
        sa = g["stage_a"].shape[1:] if "stage_a" in g else None
        return _Pending(
            start, stop, np.zeros(k, bool), np.full(k, "", object), np.full(k, "", object), np.full(k, "", object),
            np.full(k, "", object), np.zeros((k, 2), np.int32), np.zeros(k, np.uint8),
            np.zeros((k, *lat_shape), self.dtype), np.zeros((k, *sa), self.dtype) if sa else None,
        )

    def add(self, b: RowBatch) -> None:
        if b.ready is not None:  # device -> host copies still running: wait here, not on the encoding thread
            b.ready()
        if self.dtype == np.float16:
            okkeys = [k for k, o in zip(b.keys, b.ok) if o]
            if b.latents is not None:
                check_fp16(b.latents, "latents", okkeys)
            if b.stage_a is not None:
                check_fp16(b.stage_a, "stage_a", okkeys)
            for name, v in (b.controls or {}).items():
                if v.dtype != np.uint8:
                    check_fp16(v, name, okkeys)
        j = 0
        for i, r in enumerate(b.rows.tolist()):
            c = r // self.chunk_rows
            key = (b.group, c)
            p = self._pending.get(key)
            if p is None:
                p = self._pending[key] = self._new_pending(b.group, c)
            if b.controls and p.controls is None:
                g = self._group(b.group)
                p.controls = {a: np.zeros((p.stop - p.start, *g[a].shape[1:]), g[a].dtype) for a in b.controls}
            o = r - p.start
            p.keys[o], p.captions[o], p.sources[o], p.reasons[o] = b.keys[i], b.captions[i], b.sources[i], b.reasons[i]
            p.orig_size[o] = b.orig_size[i]
            if b.ok[i]:
                p.latents[o] = b.latents[j]
                if p.stage_a is not None and b.stage_a is not None:
                    p.stage_a[o] = b.stage_a[j]
                for name, v in (b.controls or {}).items():
                    p.controls[name][o] = v[j]
                p.status[o] = STATUS_OK
                j += 1
            else:
                p.status[o] = STATUS_SKIPPED
            p.filled[o] = True
            if p.filled.all():
                self._write(b.group, p)
                del self._pending[key]

    def _write(self, gpath: str, p: _Pending) -> None:
        g = self._group(gpath)
        s = slice(p.start, p.stop)
        data = {"latents": p.latents, "stage_a": p.stage_a, "keys": p.keys.astype(str),
                "captions": p.captions.astype(str), "source": p.sources.astype(str),
                "skip_reason": p.reasons.astype(str), "orig_size": p.orig_size}
        for name, values in (p.controls or {}).items():  # controls and their statuses before the row status
            data[name] = values
            data[f"{name}_status"] = p.status
        data["status"] = p.status
        for name, values in data.items():  # status last: marks the chunk complete
            if values is not None:
                writable(g[name])[s] = values  # every chunk gets a file, also an all-zero one
        self.chunks_written += 1
        if self.on_chunk is not None:
            self.on_chunk(gpath, p)


class WriterThread:
    """Run a :class:`ChunkWriter` on a background thread fed through a bounded queue.

    ``put`` blocks when ``max_queue`` batches are waiting (back-pressure bounds memory). An
    exception on the thread is re-raised by the next ``put`` or by ``close``.
    """

    def __init__(self, writer: ChunkWriter, max_queue: int = 8):
        self.writer = writer
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._error: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="cascadekit-writer", daemon=True)
        self._t.start()

    def _run(self):
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is not None:
                continue
            try:
                self.writer.add(item)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self._error = e

    def put(self, b: RowBatch) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(b)

    def close(self) -> None:
        self._q.put(None)
        self._t.join()
        if self._error is not None:
            raise self._error
