"""LatentDataset: shuffled, batched training reads from a latent store.

Random single-sample reads from Zarr cost ~1-2 ms per chunk touched, so the dataset never reads
single samples. Each epoch it

1. lists the complete rows (``status == 1``; rows still being written are invisible) in
   chunk-aligned *blocks*, and permutes the blocks (``seed``, ``epoch``);
2. gives rank ``r`` of ``world_size`` the ``r``-th contiguous slice of that block sequence (disjoint,
   complete, sizes differ by at most one sample), and DataLoader worker ``w`` the ``w``-th
   contiguous slice of the rank's part;
3. reads ``buffer_blocks`` blocks at a time (one contiguous read per block and field), shuffles the
   rows inside this buffer, and emits batches (a batch never mixes aspect-ratio buckets).

When the requested fields fit in memory (``in_memory="auto"``: at most ``memory_budget`` bytes)
they are read once and every epoch is a full random permutation instead.

Use with ``DataLoader(ds, batch_size=None, num_workers=k)``; call :meth:`set_epoch` each epoch.
"""
from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cascadekit.codec.distributed import from_env
from cascadekit.codec.errors import InputError
from cascadekit.datasets.access import FIELDS, TEXT_FIELDS, LatentStore
from cascadekit.datasets.remote import is_url, store_path

STRING_FIELDS = tuple(f for f, d in FIELDS.items() if d.kind == "string")


@dataclass
class _Group:
    path: str
    rows: np.ndarray  # complete rows (status ok), increasing
    chunk_rows: int


class LatentDataset(IterableDataset):
    """Batches of latents (+ captions, + text embeddings when present) from a latent store.

    Args:
        store: path of the store (``*.zarr``).
        fields: arrays to return. Default: ``latents`` and ``captions``, plus ``clip_text`` and
            ``clip_text_pooled`` when the store has them. Also allowed: ``stage_a``, ``keys``,
            ``source``, ``orig_size``.
        batch_size: samples per batch.
        shuffle: block shuffle + shuffle buffer (or a full permutation in memory); False reads in order.
        seed: base seed; the epoch's order depends on ``(seed, epoch)`` only.
        rank, world_size: this process's share (default: ``RANK``/``WORLD_SIZE`` env, else 0/1).
        group: read only this sample group (e.g. ``"buckets/768x768"``); default all groups.
        drop_last: drop each group's last incomplete batch of a worker.
        buffer_blocks: blocks (chunks) per shuffle buffer.
        in_memory: True, False, or "auto" (when the fields of all complete rows fit in ``memory_budget``,
            and only with ``num_workers=0``: it is fastest without workers).
        read_threads: threads reading the next shuffle buffer while the current one is emitted.
        dtype: torch dtype float tensors are returned in (default: as stored, usually float16 --
            cast on the GPU, it is cheaper there than a CPU conversion).

    Yields:
        dict with ``latents`` (B,16,h,w) (stored dtype unless ``dtype``), ``captions`` list[str], ``clip_text`` (B,77,C),
        ``clip_text_pooled`` (B,1,C) when requested, plus ``rows`` (B,) int64 and ``group`` str.
    """

    def __init__(self, store, fields=None, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, group: str | None = None,
                 drop_last: bool = False, buffer_blocks: int = 8, in_memory="auto",
                 memory_budget: int = 2 << 30, dtype: torch.dtype | None = None, read_threads: int = 2):
        super().__init__()
        self.path = store_path(store) if is_url(store) else os.fspath(store)  # s3://... : datasets/remote.py
        st = LatentStore(self.path)
        paths = st.group_paths
        if group is not None:
            st.group(group)  # InputError naming the groups there are
            paths = [group]
        self.group_paths = paths
        first = st.group(paths[0])
        present = st.common_fields(paths)
        if fields is None:
            fields = ["latents", "captions"] + [f for f in TEXT_FIELDS if f in present]
        fields = list(dict.fromkeys(fields))
        missing = [f for f in fields if f not in present]
        if missing:
            raise InputError(f"{self.path} has no field(s) {missing}; available: {present}")
        if batch_size < 1:
            raise InputError("batch_size must be >= 1")
        self.fields = fields
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        env = from_env()
        self.rank = env.rank if rank is None else rank
        self.world_size = env.world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise InputError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.drop_last = drop_last
        self.buffer_blocks = max(1, buffer_blocks)
        self.read_threads = max(1, read_threads)
        self.dtype = dtype
        self.chunk_rows = st.chunk_rows
        self.attrs = st.attrs
        self.refresh()
        self._auto_memory = in_memory == "auto"
        if in_memory == "auto":
            per_row = sum(_row_bytes(first, f) for f in fields)
            in_memory = per_row * self.num_complete <= memory_budget
        self.in_memory = bool(in_memory)
        self._cache = None

    # ------------------------------------------------------------------ bookkeeping
    def refresh(self) -> None:
        """Re-select the usable rows (a store being written shows more complete rows later).

        The rule is :meth:`~cascadekit.datasets.access.GroupView.select`'s: status ok, text_status ok for
        text fields, chunk files present; ok rows behind missing chunks are skipped with a warning.
        """
        st = LatentStore(self.path)
        self._groups = []
        for gp in self.group_paths:
            sel = st.group(gp).select(self.fields)
            if sel.problems:
                warnings.warn(f"{self.path}: skipping {sel.lost_rows} rows with missing chunk files: "
                              f"{sel.describe_problems()}; rerun `cascadekit encode`/`embed-text` to re-create them",
                              stacklevel=2)
            self._groups.append(_Group(gp, sel.rows, self.chunk_rows))
        self._cache = None

    @property
    def num_complete(self) -> int:
        return sum(len(g.rows) for g in self._groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _blocks(self) -> list[tuple[int, np.ndarray]]:
        """Epoch order of blocks: (group index, rows) with rows inside one chunk, not empty."""
        blocks = []
        for gi, g in enumerate(self._groups):
            if len(g.rows) == 0:
                continue
            cid = g.rows // g.chunk_rows
            cuts = np.flatnonzero(np.diff(cid)) + 1
            blocks += [(gi, r) for r in np.split(g.rows, cuts)]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, 1])
            blocks = [blocks[i] for i in rng.permutation(len(blocks))]
        return blocks

    @staticmethod
    def _slice(blocks, part: int, parts: int):
        """Contiguous ``part``-th of ``parts`` slices of the concatenated block rows."""
        total = sum(len(r) for _, r in blocks)
        lo, hi = total * part // parts, total * (part + 1) // parts
        out, pos = [], 0
        for gi, r in blocks:
            a, b = max(lo - pos, 0), min(hi - pos, len(r))
            if a < b:
                out.append((gi, r[a:b]))
            pos += len(r)
            if pos >= hi:
                break
        return out

    def __len__(self) -> int:
        """Batches this rank yields per epoch with one DataLoader worker (per group rounding)."""
        n = [0] * len(self._groups)
        for gi, r in self._slice(self._blocks(), self.rank, self.world_size):
            n[gi] += len(r)
        f = math.floor if self.drop_last else math.ceil
        return int(sum(f(k / self.batch_size) for k in n))

    # ------------------------------------------------------------------ reading
    def _arrays(self, st: LatentStore) -> list[dict]:
        """One chunk reader per (group, field), opened once per iteration (opening costs a metadata read).
        Blocks lie inside one chunk and are read once: nothing is kept decoded."""
        return [{f: st.group(grp.path).cache(f, keep=0) for f in self.fields} for grp in self._groups]

    def _fill(self, arrays, readers, blocks, fronts: dict, arena: _Arena) -> dict[int, dict]:
        """One shuffle buffer: per group (in the order the blocks first name it) one contiguous array per field
        holding its blocks' rows in block order, after ``fronts[gi]`` rows kept free for the rows carried over
        from the previous buffer. The blocks are decoded and copied in by ``readers`` (threads) concurrently."""
        sizes: dict[int, int] = {}
        slots = []
        for gi, rows in blocks:
            at = sizes.get(gi, fronts.get(gi, 0))
            slots.append((gi, rows, at))
            sizes[gi] = at + len(rows)
        specs = [(gi, f, (n, *c.row_shape), c.dtype) for gi, n in sizes.items() for f, c in arrays[gi].items()]
        parts: dict[int, dict] = {gi: {"rows": np.empty(n, np.int64)} for gi, n in sizes.items()}
        for (gi, f, _, _), a in zip(specs, arena.carve([(shape, dtype) for _, _, shape, dtype in specs])):
            parts[gi][f] = a

        def read(slot):
            gi, rows, at = slot
            parts[gi]["rows"][at:at + len(rows)] = rows
            for f, c in arrays[gi].items():
                c.read_into(rows, parts[gi][f][at:at + len(rows)])

        list(readers.map(read, slots))
        return parts

    def _load_all(self, st: LatentStore) -> list[dict]:
        cache = []
        for d, g in zip(self._arrays(st), self._groups):
            cache.append({**{f: r.rows(g.rows) for f, r in d.items()}, "rows": g.rows})
        return cache

    def _emit(self, gi: int, cat: dict, idx: np.ndarray) -> dict:
        return self._tensors(gi, {f: cat[f][idx] for f in self.fields + ["rows"]})

    def _tensors(self, gi: int, sub: dict) -> dict:
        """One batch: numpy field arrays of its rows -> tensors / lists of str (no per-sample work for numbers)."""
        b = {}
        for f in self.fields:
            x = sub[f]
            if f in STRING_FIELDS:
                b[f] = x.tolist() if x.dtype.kind in "UT" else [str(s) for s in x.tolist()]
            elif f == "orig_size":
                b[f] = torch.from_numpy(np.ascontiguousarray(x)).long()
            else:
                t = torch.from_numpy(np.ascontiguousarray(x))
                b[f] = t if self.dtype is None else t.to(self.dtype)
        b["rows"] = torch.from_numpy(sub["rows"].astype(np.int64))
        b["group"] = self._groups[gi].path
        return b

    def __iter__(self):
        root = LatentStore(self.path)
        blocks = self._slice(self._blocks(), self.rank, self.world_size)
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        blocks = self._slice(blocks, wid, nw)
        rng = np.random.default_rng([self.seed, self.epoch, 2, self.rank, wid])
        # "auto" keeps the in-memory copy to the main process: DataLoader workers would each load
        # (and, without persistent workers, reload every epoch) the whole store.
        if self.in_memory and not (self._auto_memory and info is not None):
            yield from self._iter_memory(root, blocks, rng)
        else:
            yield from self._iter_blocks(root, blocks, rng)

    def _iter_memory(self, root, blocks, rng):
        if self._cache is None:
            self._cache = self._load_all(root)
        for gi in range(len(self._groups)):
            rows = [r for g, r in blocks if g == gi]
            if not rows:
                continue
            want = np.concatenate(rows)
            pos = np.searchsorted(self._cache[gi]["rows"], want)
            if self.shuffle:
                pos = pos[rng.permutation(len(pos))]
            for s in range(0, len(pos), self.batch_size):
                idx = pos[s:s + self.batch_size]
                if len(idx) < self.batch_size and self.drop_last:
                    break
                yield self._emit(gi, self._cache[gi], idx)

    def _iter_blocks(self, root, blocks, rng):
        arrays = self._arrays(root)
        buffers = [blocks[s:s + self.buffer_blocks] for s in range(0, len(blocks), self.buffer_blocks)]
        fronts = _carried(buffers, self.batch_size)
        arenas = (_Arena(), _Arena())  # buffer k is carved from arenas[k % 2]: one is filled, the other emitted
        carry: dict[int, dict] = {}  # group -> its rows not emitted yet (one contiguous part)
        pool = ThreadPoolExecutor(max_workers=1)  # prefetches the next buffer
        readers = ThreadPoolExecutor(max_workers=self.read_threads)  # read its blocks (beside the main thread)
        try:
            ahead = pool.submit(self._fill, arrays, readers, buffers[0], fronts[0], arenas[0]) if buffers else None
            for k in range(len(buffers)):
                got = ahead.result()
                # read the next buffer while this one is shuffled and emitted
                ahead = pool.submit(self._fill, arrays, readers, buffers[k + 1], fronts[k + 1], arenas[(k + 1) % 2]) \
                    if k + 1 < len(buffers) else None
                for gi, part in got.items():
                    if gi in carry:  # the carried rows go into the front the buffer kept for them
                        for f, v in carry[gi].items():
                            part[f][:len(v)] = v
                    carry[gi] = part
                yield from self._drain(carry, rng)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            readers.shutdown(wait=True, cancel_futures=True)
        for gi, part in carry.items():
            n = len(part["rows"])
            if n and not (self.drop_last and n < self.batch_size):
                yield self._emit(gi, part, np.arange(n))

    def _drain(self, carry, rng):
        """Emit every full batch of the buffer (one gather per batch and field); keep the leftover rows (per
        group) for the next buffer."""
        for gi in list(carry):
            part = carry[gi]
            n = len(part["rows"])
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            full = n - n % self.batch_size
            for a in range(0, full, self.batch_size):
                yield self._emit(gi, part, order[a:a + self.batch_size])
            if full < n:  # leftover rows stay for the next buffer
                left = np.sort(order[full:])
                carry[gi] = {f: v[left] for f, v in part.items()}
            else:
                del carry[gi]


class _Arena:
    """Reused memory a shuffle buffer's numeric arrays are carved from. A fresh allocation per buffer (tens of
    MB) costs the kernel a page fault and a zeroed page per 4 KiB, as much CPU as decoding the buffer. Safe to
    reuse once the buffer was emitted: batches and leftover rows are copies (fancy indexing)."""

    ALIGN = 64

    def __init__(self):
        self.mem = np.empty(0, np.uint8)

    def carve(self, specs: list[tuple[tuple[int, ...], np.dtype]]) -> list[np.ndarray]:
        """One uninitialised array per ``(shape, dtype)``; strings (numpy StringDType) get their own array."""
        sizes = [-(-int(np.prod(shape)) * dt.itemsize // self.ALIGN) * self.ALIGN if dt.kind != "T" else 0
                 for shape, dt in specs]
        if self.mem.size < sum(sizes):
            self.mem = np.empty(sum(sizes), np.uint8)
        out, at = [], 0
        for (shape, dt), size in zip(specs, sizes):
            if dt.kind == "T":
                out.append(np.empty(shape, dt))
                continue
            nbytes = int(np.prod(shape)) * dt.itemsize
            out.append(self.mem[at:at + nbytes].view(dt).reshape(shape))
            at += size
        return out


def _carried(buffers: list[list], batch_size: int) -> list[dict[int, int]]:
    """Per shuffle buffer, ``{group: rows carried over from the buffers before}`` (what :meth:`LatentDataset._drain`
    leaves: every group's rows modulo ``batch_size``), so that a buffer is laid out with room for them."""
    left: dict[int, int] = {}
    out = []
    for blocks in buffers:
        out.append(dict(left))
        for gi, rows in blocks:
            left[gi] = left.get(gi, 0) + len(rows)
        left = {gi: n % batch_size for gi, n in left.items() if n % batch_size}
    return out


def _row_bytes(g, field: str) -> int:
    """Bytes one row of ``field`` takes in memory (``g`` a :class:`~cascadekit.datasets.access.GroupView`)."""
    if field in STRING_FIELDS:
        return 128
    a = g.array(field)
    return int(np.prod(a.shape[1:])) * a.dtype.itemsize if hasattr(a.dtype, "itemsize") else 64
