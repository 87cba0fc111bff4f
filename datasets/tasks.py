"""The work of a build: :class:`Task` (one encoder batch), a rank's lazy :class:`TaskList`, and
:func:`make_tasks`, which turns the store's status into the pending, chunk-aligned batches of this rank."""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cascadekit.codec import distributed as D
from cascadekit.datasets import store as S
from cascadekit.datasets.plan import Sample


@dataclass(frozen=True, slots=True)
class Task:
    """One encoder batch: rows ``start..stop-1`` of group ``group``.

    Holds no samples: they are looked up in the plan when the batch is loaded (:meth:`samples`), so
    the pending work of a run costs a few dozen bytes per batch, not a Python object per image.
    """

    group: str
    start: int
    stop: int

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.stop))

    def samples(self, plan: Sequence[Sample], groups: dict) -> list[Sample]:
        """The planned samples of this batch (``plan[groups[group][row]]`` per row)."""
        idx = groups[self.group]
        if isinstance(idx, range) and idx.step == 1:  # contiguous plan rows: one read
            return plan[idx[self.start]: idx[self.start] + self.stop - self.start]
        return [plan[int(i)] for i in idx[self.start:self.stop]]


class TaskList(Sequence):
    """A rank's pending tasks, made on demand from its pending chunks (a few bytes per chunk).

    ``tasks[k]`` is the ``k``-th :class:`Task`: chunks in order, each cut into batches of
    ``batch_size`` rows that start at the chunk's first row.
    """

    def __init__(self, groups: Sequence[str], gid, first, stop, batch_size: int):
        # pending chunk j: rows first[j]..stop[j]-1 of group groups[gid[j]]
        self._groups = list(groups)
        self._gid = np.asarray(gid, np.int32)
        self._a = np.asarray(first, np.int64)
        self._b = np.asarray(stop, np.int64)
        self.batch_size = bs = int(batch_size)
        self._first = np.concatenate([[0], np.cumsum((self._b - self._a + bs - 1) // bs)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._first[-1])

    @property
    def rows_total(self) -> int:
        """Rows covered by all tasks."""
        return int((self._b - self._a).sum())

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        n = len(self)
        k = int(k)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(f"task {k} out of range (0..{n - 1})")
        j = int(np.searchsorted(self._first, k, side="right")) - 1
        s = int(self._a[j]) + (k - int(self._first[j])) * self.batch_size
        return Task(self._groups[self._gid[j]], s, min(s + self.batch_size, int(self._b[j])))


def make_tasks(groups: dict, statuses: dict, chunk_rows: int, batch_size: int, info: D.DistInfo,
               block_chunks: int = 64) -> tuple[TaskList, int]:
    """This rank's pending tasks (chunk-aligned batches) and the number of its rows already done.

    ``statuses`` maps each group to its per-row status, anything sliceable (a numpy array or
    :class:`~.store.StatusView`); it is read ``block_chunks`` chunks at a time. Chunks are numbered
    across groups in order and split between ranks with :func:`~.distributed.share`.
    """
    sizes = [(gp, len(idx), (len(idx) + chunk_rows - 1) // chunk_rows) for gp, idx in groups.items()]
    mine = D.share(sum(nc for _, _, nc in sizes), info)
    bs = max(1, min(batch_size, chunk_rows))
    gid, first, stop = array("i"), array("q"), array("q")
    done, base = 0, 0
    for g, (gp, n, nc) in enumerate(sizes):
        lo, hi = max(mine.start - base, 0), min(mine.stop - base, nc)  # my chunks of this group
        base += nc
        for c0 in range(lo, hi, block_chunks):
            c1 = min(c0 + block_chunks, hi)
            st = np.asarray(statuses[gp][c0 * chunk_rows: min(c1 * chunk_rows, n)])
            for c in range(c0, c1):
                a, b = c * chunk_rows, min((c + 1) * chunk_rows, n)
                if (st[a - c0 * chunk_rows: b - c0 * chunk_rows] != S.STATUS_PENDING).all():
                    done += b - a
                    continue
                gid.append(g)
                first.append(a)
                stop.append(b)
    return TaskList([gp for gp, _, _ in sizes], gid, first, stop, bs), done


__all__ = ["Task", "TaskList", "make_tasks"]
