"""Read-ahead of the trainer's micro-batches: decode and gather the next batches while the current step trains.

The batch plan says which ``(group, indices)`` every micro-batch of every coming update reads, so they can be read
before they are needed. :class:`ReadAhead` runs two background threads over that sequence:

* the *fetch* thread calls ``data.fetch(group, indices)``: the chunks the batch needs, decoded (zstd decompression
  holds the GIL, so one thread is what it can use) and held for the batch;
* the *assemble* thread calls ``data.assemble(group, indices, fetched)``: the batch gathered from them and converted
  (numpy / torch copies, which release the GIL, so this overlaps the next decode and the training step).

``read(group, indices)`` on the training thread returns the next batch of the sequence, identical to
``data.read(group, indices)`` (the same code computes it, from the same indices; the order of reads does not change
values). Bounded: at most ``ahead`` micro-batches are in flight (their decoded chunks held once each) and at most
``ready`` assembled batches wait. An exception raised for a batch (a damaged chunk) is raised again, unchanged, by
the ``read`` of that batch; earlier batches are handed out first. :meth:`close` (also on exit of a ``with`` block)
stops and joins both threads. The key sequence is advanced on the calling thread only, so the batch plan is never
touched by a background thread.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

Key = tuple[str, list[int]]  # (group name, sample indices) of one micro-batch


@dataclass(frozen=True)
class ReadAheadSettings:
    """``ahead``: micro-batches read ahead of the training thread (whose chunks are decoded and held; >= 1);
    ``ready``: assembled batches waiting at most (>= 1). A store's shuffle window is 8 chunks, so with one chunk
    per batch 8 ahead lets the decoding of the next window overlap the gathering of this one."""

    ahead: int = 8
    ready: int = 2

    def __post_init__(self):
        if self.ahead < 1 or self.ready < 1:
            raise ValueError(f"read-ahead needs ahead >= 1 and ready >= 1, got {self}")


@runtime_checkable
class StagedData(Protocol):
    """A training source readable in two stages (``assemble(g, i, fetch(g, i)) == read(g, i)``), e.g. a store."""

    def fetch(self, group: str, indices: Sequence[int]) -> Any: ...

    def assemble(self, group: str, indices: Sequence[int], fetched: Any) -> dict[str, Any]: ...


class _Failed:
    """The exception raised while reading one batch (raised again by the read of that batch)."""

    def __init__(self, error: BaseException):
        self.error = error


_END = object()  # tells a stage thread to stop


class ReadAhead:
    """Batches of ``keys`` (the micro-batches to come, in order) read on two background threads (module docstring).

    ``data``: a :class:`StagedData`. Use as a context manager, or call :meth:`close`. ``stage_cpu_s``: CPU seconds
    each thread has spent in its stage (``fetch``, ``assemble``), for benchmarks.
    """

    def __init__(self, data: StagedData, keys: Iterator[Key], settings: ReadAheadSettings = ReadAheadSettings()):
        self.data, self.settings = data, settings
        self._keys = iter(keys)
        self._expected: queue.SimpleQueue = queue.SimpleQueue()  # keys submitted, not yet handed out (this thread)
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._fetched: queue.SimpleQueue = queue.SimpleQueue()
        self._ready: queue.Queue = queue.Queue(maxsize=settings.ready)
        self._stop = threading.Event()
        self.stage_cpu_s = {"fetch": 0.0, "assemble": 0.0}  # each written by its own thread only
        self.threads = [threading.Thread(target=self._fetch_loop, name="cascadekit-read-ahead-fetch", daemon=True),
                        threading.Thread(target=self._assemble_loop, name="cascadekit-read-ahead-assemble",
                                         daemon=True)]
        for t in self.threads:
            t.start()
        for _ in range(settings.ahead):
            if not self._submit():
                break

    def _submit(self) -> bool:
        key = next(self._keys, None)
        if key is None:
            return False
        group, indices = key
        key = (group, list(indices))
        self._expected.put(key)
        self._todo.put(key)
        return True

    def read(self, group: str, indices: Sequence[int]) -> dict[str, Any]:
        """The next batch of the sequence, which must be ``(group, indices)``; raises what reading it raised."""
        want = self._expected.get_nowait() if not self._expected.empty() else None
        if want != (group, list(indices)):
            raise RuntimeError(f"read-ahead out of step: asked for {group!r} {list(indices)[:4]}..., "
                               f"the plan's next batch is {want and (want[0], want[1][:4])}")
        self._submit()
        result = self._ready.get()
        if isinstance(result, _Failed):
            raise result.error
        return result

    # ------------------------------------------------------------------ the two stages
    def _fetch_loop(self) -> None:
        while True:
            key = self._todo.get()
            if key is _END or self._stop.is_set():
                self._fetched.put(_END)
                return
            c = time.thread_time()
            try:
                fetched = self.data.fetch(*key)
            except BaseException as e:  # noqa: BLE001 - handed to the training thread with its batch
                fetched = _Failed(e)
            self.stage_cpu_s["fetch"] += time.thread_time() - c
            self._fetched.put((key, fetched))

    def _assemble_loop(self) -> None:
        while True:
            item = self._fetched.get()
            if item is _END or self._stop.is_set():
                return
            key, fetched = item
            result, c = fetched, time.thread_time()
            if not isinstance(fetched, _Failed):
                try:
                    result = self.data.assemble(*key, fetched)
                except BaseException as e:  # noqa: BLE001 - as above
                    result = _Failed(e)
            self.stage_cpu_s["assemble"] += time.thread_time() - c
            del item, fetched  # the decoded chunks are not held while waiting for room
            self._ready.put(result)  # blocks while `ready` batches wait (no polling); close() drains to free it

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop both threads and wait for them (each finishes the batch it is on); idempotent."""
        self._stop.set()
        self._todo.put(_END)
        for t in self.threads:
            while t.is_alive():
                self._drain()
                t.join(timeout=0.05)

    def _drain(self) -> None:
        while True:
            try:
                self._ready.get_nowait()
            except queue.Empty:
                return

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
