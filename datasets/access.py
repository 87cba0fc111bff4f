"""The one read-side API of a latent store: every reader (``LatentDataset``, the trainer, ``evaluate``,
``inspect``, ``embed-text``) opens stores, selects rows and reads chunks through it.

* :class:`LatentStore` opens a store read-only (format versions 1 and 2) and lists its sample groups.
* :class:`GroupView` is one sample group: its fields, their per-row shapes and dtypes, and
  :meth:`GroupView.select`, **the** rule for which rows are usable: ``status == ok``; for a field governed
  by ``text_status`` (text embeddings) also ``text_status == ok``; and every chunk file holding the row in
  a requested data field (:data:`~.store.DATA_ARRAYS`) present (a deleted chunk would otherwise read as
  zeros, zarr's fill value).
* :class:`ChunkCache` reads rows of one array chunk by chunk, keeping recently decoded chunks; a missing
  or damaged chunk is an :class:`InputError` naming the array and rows, never zeros or a codec traceback.
  Chunks of a local store are decoded straight from their files (:mod:`~cascadekit.datasets.chunk_decode`).

Fields are named in :data:`FIELDS`; a later kind of per-row data (ControlNet controls, image embeddings)
is one more entry there.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from cascadekit.codec.errors import InputError
from cascadekit.datasets import integrity
from cascadekit.datasets import store as S
from cascadekit.datasets.chunk_decode import ChunkError, decoder_for
from cascadekit.datasets.remote import store_path


@dataclass(frozen=True)
class Field:
    """A per-row field: the array holding it, what it is, and the status array that says a row has it."""

    array: str
    kind: str  # "tensor" (float data), "int" (integer data), "string"
    status: str = "status"


FIELDS: dict[str, Field] = {
    "latents": Field("latents", "tensor"),
    "stage_a": Field("stage_a", "tensor"),
    "clip_text": Field("clip_text", "tensor", "text_status"),
    "clip_text_pooled": Field("clip_text_pooled", "tensor", "text_status"),
    "clip_img": Field("clip_img", "tensor"),
    # (S,16,h,w) per row: `encode / add-controls --effnet-scales` (datasets/effnet_scales.py), with its own status
    "effnet_scales": Field("effnet_scales", "tensor", "effnet_scales_status"),
    # ControlNet controls (`encode --controls`, `add-controls`; datasets/controls.py), each with its own status
    "control_canny": Field("control_canny", "int", "control_canny_status"),  # (224,224) uint8 edge map
    "control_sr": Field("control_sr", "tensor", "control_sr_status"),  # (16,h/2,w/2) effnet latents of the x0.5 crop
    "control_inpaint": Field("control_inpaint", "int", "control_inpaint_status"),  # (3,H,W) uint8 crop pixels
    "orig_size": Field("orig_size", "int"),
    "captions": Field("captions", "string"),
    "keys": Field("keys", "string"),
    "source": Field("source", "string"),
}
TEXT_FIELDS = tuple(f for f, d in FIELDS.items() if d.status == "text_status")

REPAIR_HINT = ("run `cascadekit inspect --verify STORE` to list every damaged chunk, then rerun `cascadekit encode` "
               "(latents, captions, ...) or `cascadekit embed-text` (text embeddings) with the same arguments: "
               "they re-create them")


def field_info(name: str) -> Field:
    try:
        return FIELDS[name]
    except KeyError:
        raise InputError(f"unknown store field {name!r}; known: {sorted(FIELDS)}") from None


@dataclass
class Selection:
    """The usable rows of a group for some fields, and why the other ok rows were left out."""

    rows: np.ndarray  # increasing row numbers
    text_pending: int = 0  # ok rows without text embeddings yet (text_status not ok)
    control_pending: int = 0  # ok rows without a requested control (its <control>_status not ok)
    problems: list = field(default_factory=list)  # integrity.ChunkProblem behind ok rows
    lost_rows: int = 0  # ok rows left out because of those problems

    def describe_problems(self, limit: int = 5) -> str:
        lines = [p.describe() for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more")
        return "; ".join(lines)

    def require_complete(self, where: str, group: str) -> None:
        """InputError for a trainer, which needs every ok row: text or controls still pending, or rows behind
        missing chunk files (``where`` names the store, ``group`` the group)."""
        if self.text_pending:
            raise InputError(f"{where}: {self.text_pending} samples of group {group!r} have no text embedding yet; "
                             "rerun `cascadekit embed-text` to finish it")
        if self.control_pending:
            raise InputError(f"{where}: {self.control_pending} samples of group {group!r} have no stored control "
                             "yet; rerun `cascadekit add-controls` to finish it")
        if self.problems:
            raise InputError(f"{where}: {self.lost_rows} samples of group {group!r} have missing chunk files "
                             f"({self.describe_problems()}); {REPAIR_HINT}")


class GroupView:
    """One sample group of an open store (``path`` ``""`` is the root group)."""

    def __init__(self, store: LatentStore, path: str):
        self.store, self.path = store, path
        self.name = path or "root"
        self.g = S.sample_group(store.root, path)
        self.n = int(self.g["status"].shape[0])
        self._names = set(self.g.array_keys())

    # ------------------------------------------------------------------ what the group holds
    @property
    def fields(self) -> list[str]:
        """Fields this group has (names of :data:`FIELDS`, in that order)."""
        return [f for f, d in FIELDS.items() if d.array in self._names and
                (d.status == "status" or d.status in self._names)]

    def has(self, name: str) -> bool:
        return name in self.fields

    def array(self, name: str):
        """The zarr array of field (or array) ``name``."""
        arr = FIELDS[name].array if name in FIELDS else name
        if arr not in self._names:
            raise InputError(f"{self.store.path}: group {self.name!r} has no {arr!r} array")
        return self.g[arr]

    def shape(self, name: str) -> tuple[int, ...]:
        """Per-row shape of field ``name``, e.g. (16, 24, 24) for ``latents``; () for strings."""
        return tuple(int(s) for s in self.array(name).shape[1:])

    def dtype(self, name: str) -> np.dtype | str:
        a = self.array(name)
        return a.dtype if FIELDS.get(name, Field(name, "tensor")).kind != "string" else "str"

    def chunk_rows(self, name: str = "latents") -> int:
        return int(self.array(name).chunks[0])

    # ------------------------------------------------------------------ statuses and the ok rows
    def status(self, start: int = 0, stop: int | None = None, name: str = "status") -> np.ndarray:
        """``status`` (or ``text_status``) of rows ``start..stop-1``; undecodable chunks read as pending."""
        return S.read_status(self.g, start, stop, name)

    def iter_status(self, block_rows: int = 1 << 16):
        """``(start, status)`` blocks of whole chunks, in order (constant memory)."""
        return S.iter_status(self.g, block_rows)

    def select(self, fields=("latents",), check_chunks: bool = True, block_rows: int = 1 << 16) -> Selection:
        """The rows usable for ``fields``: status ok, text_status ok for text fields, and (``check_chunks``)
        every chunk file behind the row present in each field's array. Reads status block by block."""
        infos = [field_info(f) for f in fields]
        for f, d in zip(fields, infos):
            if not self.has(f):
                raise InputError(f"{self.store.path}: group {self.name!r} has no field {f!r}; it has {self.fields}")
        extra_status = sorted({d.status for d in infos} - {"status"})  # text_status, control statuses
        arrays = sorted({d.array for d in infos} & set(S.DATA_ARRAYS)) if check_chunks else []
        rows, sel = [], Selection(np.zeros(0, np.int64))
        for start, st in self.iter_status(block_rows):
            ok = st == S.STATUS_OK
            for name in extra_status:
                tok = self.status(start, start + len(st), name) == S.STATUS_OK
                if name == "text_status":
                    sel.text_pending += int((ok & ~tok).sum())
                else:
                    sel.control_pending += int((ok & ~tok).sum())
                ok &= tok
            bad = S.damaged_rows(self.g, start, start + len(st), ok, arrays, deep=False)
            if bad:
                lost = integrity.rows_mask(bad, start, start + len(st)) & ok
                sel.problems += bad
                sel.lost_rows += int(lost.sum())
                ok &= ~lost
            rows.append(np.flatnonzero(ok) + start)
        sel.rows = np.concatenate(rows).astype(np.int64) if rows else sel.rows
        return sel

    def cache(self, name: str, keep: int | None = None, direct: bool = True) -> ChunkCache:
        """A :class:`ChunkCache` of field ``name`` (``keep`` decoded chunks; default: all of an array up to
        :data:`SMALL_BYTES`, else 16; ``direct``: see :class:`ChunkCache`)."""
        arr = self.array(name)
        if keep is None:
            n_chunks = -(-arr.shape[0] // int(arr.chunks[0]))
            nbytes = int(np.prod(arr.shape)) * getattr(arr.dtype, "itemsize", 64)
            keep = n_chunks if nbytes <= SMALL_BYTES else 16
        base = arr.path.rsplit("/", 1)[-1]
        label = f"{self.store.path}: {self.path + '/' if self.path else ''}{base}"
        return ChunkCache(arr, keep, label, presence=base in S.DATA_ARRAYS, direct=direct)


SMALL_BYTES = 256 << 20  # arrays up to this size are kept decoded in memory entirely by default


class LatentStore:
    """A latent store opened read-only (see docs/dataset_format.md).

    Args:
        path: the store folder. Raises :class:`InputError` if it is not a readable cascadekit store.

    Attributes: ``path``, ``root`` (zarr group), ``attrs`` (dict of the root attributes), ``version``,
    ``chunk_rows``, ``group_paths``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = store_path(path)
        if not self.path.exists():
            raise InputError(f"latent store {self.path} does not exist (create it with `cascadekit encode`)")
        self.root = S.open_store(self.path)
        self.attrs = dict(self.root.attrs)
        if self.attrs.get("initializing", False) or "chunk_rows" not in self.attrs:
            raise InputError(f"{self.path} is still being created (or its creation was cut off); "
                             "run `cascadekit encode` again to finish it")
        self.version = int(self.attrs.get("format_version", S.FORMAT_VERSION))
        self.chunk_rows = int(self.attrs["chunk_rows"])
        self.group_paths = S.group_paths(self.root)
        self._views: dict[str, GroupView] = {}

    def group(self, path: str) -> GroupView:
        if path not in self.group_paths:
            raise InputError(f"{self.path} has no sample group {path!r}; it has {self.group_paths}")
        if path not in self._views:
            self._views[path] = GroupView(self, path)
        return self._views[path]

    @property
    def groups(self) -> list[GroupView]:
        return [self.group(p) for p in self.group_paths]

    def common_fields(self, paths=None) -> list[str]:
        """Fields every group (of ``paths``, default all) has, in :data:`FIELDS` order."""
        views = [self.group(p) for p in (self.group_paths if paths is None else paths)]
        return [f for f in FIELDS if all(v.has(f) for v in views)]

    def key_index(self, fields=("latents",)) -> tuple[dict, dict, list]:
        """Where each key's usable row is: ``({key: (group path, row)}, {key: source}, skipped)``.

        ``skipped`` lists ``{"key", "reason"}`` for rows that are not usable for ``fields`` (skipped when
        built, pending, behind a missing chunk, a repeated key). Reads block by block.
        """
        where: dict[str, tuple[str, int]] = {}
        sources: dict[str, str] = {}
        skipped: list[dict] = []
        for gv in self.groups:
            sel = gv.select(fields)
            usable = np.zeros(gv.n, bool)
            usable[sel.rows] = True
            for start, st in gv.iter_status():
                rs = slice(start, start + len(st))
                keys, srcs, why = (S.read_rows(gv.g, a, rs) for a in ("keys", "source", "skip_reason"))
                for j, k in enumerate(map(str, keys)):
                    reason = _unusable_reason(int(st[j]), str(why[j]), usable[start + j])
                    if reason is None and k in where:
                        reason = "duplicate key in the store; only the first row is used"
                    if reason is not None:
                        skipped.append({"key": k, "reason": reason})
                    else:
                        where[k], sources[k] = (gv.path, start + j), str(srcs[j])
        return where, sources, skipped

    def root_array(self, name: str):
        """A root-level array that is not per-row (e.g. ``empty_clip_text``), or None."""
        try:
            return self.root[name] if name in set(self.root.array_keys()) else None
        except (KeyError, OSError):
            return None


def _unusable_reason(status: int, skip_reason: str, usable: bool) -> str | None:
    if status == S.STATUS_SKIPPED:
        return f"skipped when the store was built: {skip_reason or 'unknown'}"
    if status != S.STATUS_OK:
        return "row not encoded yet (store incomplete)"
    if not usable:
        return f"its data chunk file is missing; {REPAIR_HINT}"
    return None


class ChunkCache:
    """Rows of one array read whole chunk by whole chunk, the ``keep`` most recently used kept decoded.

    Thread-safe (``LatentDataset`` reads blocks on threads). With ``presence`` (data arrays) the chunk file
    must exist before decoding (zarr would return fill values for a deleted one; string arrays may lack a
    chunk of fill values only); a decoding failure (checksum, truncation) is an
    :class:`InputError` naming the array and the rows.

    ``direct`` (default): chunks of a local store are decoded straight from their files
    (:mod:`~cascadekit.datasets.chunk_decode`); False reads every chunk through zarr (the reference path, for
    tests and benchmarks). Decoded chunks are read-only: they are shared by every caller.
    """

    def __init__(self, arr, keep: int = 1, label: str | None = None, presence: bool = True, direct: bool = True):
        self.arr, self.keep, self.presence = arr, max(0, int(keep)), presence
        self.label = label or arr.path
        self.rows_per_chunk = int(arr.chunks[0])
        self._decoder = decoder_for(arr, presence) if direct else None  # None: zarr reads (object storage, ...)
        self.chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def chunk(self, i: int) -> np.ndarray:
        """Decoded chunk ``i`` (rows ``i*c .. (i+1)*c-1``)."""
        with self._lock:
            block = self.chunks.pop(i, None)
            if block is not None:
                self.chunks[i] = block  # most recently used last
                return block
        block = self._load(i)
        with self._lock:
            if self.keep:
                self.chunks[i] = block
                while len(self.chunks) > self.keep:
                    self.chunks.popitem(last=False)
        return block

    def _load(self, i: int, out: np.ndarray | None = None) -> np.ndarray | None:
        """Decoded chunk ``i``; with ``out`` (a whole chunk's rows) decoded straight into it where the direct
        path can (returns None then)."""
        a, b = integrity.chunk_span(self.arr, i)
        if self._decoder is not None:  # the hot path: one file read, crc32c, decompression (chunk_decode)
            try:
                if out is not None and self._decoder.read_into(i, out):
                    return None
                return self._decoder.read(i)[:b - a]
            except ChunkError as e:
                raise InputError(f"{self.label}: chunk {i} (rows {a}..{b - 1}) {e.state}; {REPAIR_HINT}") from None
        st = integrity.chunk_state(self.arr, i, deep=False) if self.presence else None
        if st is not None:
            raise InputError(f"{self.label}: chunk {i} (rows {a}..{b - 1}) is {st[0]} ({st[1]}); {REPAIR_HINT}")
        try:
            return np.asarray(self.arr[a:b])
        except Exception as e:  # noqa: BLE001 - checksum / zstd / truncation errors of a damaged chunk
            raise InputError(f"{self.label}: chunk {i} (rows {a}..{b - 1}) is damaged and cannot be read "
                             f"({type(e).__name__}: {str(e)[:120]}); {REPAIR_HINT}") from None

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.arr.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        """The dtype rows are returned in (numpy ``StringDType`` for string arrays)."""
        return self.arr.dtype if isinstance(self.arr.dtype, np.dtype) else np.asarray(self.arr[0:0]).dtype

    def read_into(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Write the values of ``rows`` (increasing int array) into ``out`` (len(rows), *row shape): one copy
        straight from the decoded chunks, a slice copy for each run of consecutive rows in a chunk."""
        c = self.rows_per_chunk
        cid = rows // c
        cuts = [0, *(np.flatnonzero(np.diff(cid)) + 1).tolist(), len(rows)]
        for a, b in zip(cuts[:-1], cuts[1:]):
            ci = int(cid[a])
            local = rows[a:b] - ci * c
            run = int(local[-1] - local[0]) + 1 == b - a
            if run and b - a == c and not self.keep:  # a whole chunk, not cached: decompressed in place if it can
                block = self._load(ci, out[a:b])
                if block is None:
                    continue
            else:
                block = self.chunk(ci)
            out[a:b] = block[int(local[0]):int(local[-1]) + 1] if run else block[local]

    def rows(self, rows, blocks: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """Values of ``rows`` (int array, any order, repeats allowed), shape (len(rows), *row shape).
        ``blocks``: chunks already decoded by :meth:`chunk` ({chunk index: block}, e.g. held by a read-ahead);
        used instead of the cache where present."""
        rows = np.asarray(rows, np.int64)
        c = self.rows_per_chunk
        cid = rows // c
        out = None
        for ci in np.unique(cid):
            block = blocks.get(int(ci)) if blocks else None
            block = self.chunk(int(ci)) if block is None else block
            sel = np.flatnonzero(cid == ci)
            if out is None:
                out = np.empty((len(rows), *block.shape[1:]), dtype=block.dtype)
            out[sel] = block[rows[sel] - int(ci) * c]
        if out is None:
            out = np.empty((0, *self.arr.shape[1:]), dtype=np.asarray(self.arr[0:0]).dtype)
        return out
