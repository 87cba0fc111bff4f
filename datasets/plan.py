"""The sample plan: row ``i`` of the store is :class:`Sample` ``i`` of a :class:`PlanTable`.

A plan holds one fixed-size record per sample plus its text, in two append-only columns
(:mod:`.spill`). Built by :func:`~cascadekit.datasets.sources.plan_inputs` it lives in anonymous
temporary files, so a build of ten million images holds no more of it in memory than a build of ten.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascadekit.datasets.spill import ByteLog


@dataclass(frozen=True, slots=True)
class FileRef:
    """An image file on disk, with an optional sidecar caption file."""

    path: str
    caption_path: str | None = None


@dataclass(frozen=True, slots=True)
class TarRef:
    """Sample number ``index`` (0-based, in stream order) of the tar shard ``url``."""

    url: str
    index: int
    image_member: str | None
    caption_member: str | None


@dataclass(frozen=True, slots=True)
class Sample:
    """One planned store row.

    ``load`` says where the bytes come from (:class:`FileRef` or :class:`TarRef`, raw image ``bytes``,
    or ``None``); ``caption`` is a caption already known at planning time (manifests) or ``None``
    (read later from ``load``); ``error`` is a skip reason already known at planning time (e.g.
    ``unreadable`` tar member).
    """

    key: str
    source: str
    load: FileRef | TarRef | bytes | None
    caption: str | None = None
    error: str | None = None
    detail: str = ""


# Record per row: text offset (q), 8 field lengths (I), flags (H), kind (B), shard id (I), tar index (q),
# key hash (q: see key_hash; 0 for rows whose key is not checked for duplicates).
_REC = struct.Struct("<q8IHBIqq")
_HASH = np.dtype([("head", "V55"), ("hash", "<i8")])  # the same record, to read the hash column at once
assert _HASH.itemsize == _REC.size
_NF = 8  # text fields: key, source, a, b, c, caption, error, detail
_KIND_NONE, _KIND_FILE, _KIND_TAR, _KIND_BYTES = 0, 1, 2, 3
_SOURCE_IS_PATH = 1 << _NF  # flag: source == the file path (not stored twice)
_SOURCE_IS_TAR = 1 << (_NF + 1)  # flag: source == f"{url}#{key}"
_BLOCK = 256  # rows per read when iterating (a block of Sample objects is ~100 KB)


def key_hash(s: Sample) -> int:
    """64-bit hash of the key of a file row that is not a planned skip, else 0 (tar keys follow the
    webdataset convention, a key per shard stream, and are not checked for duplicates)."""
    if s.error is not None or isinstance(s.load, TarRef):
        return 0
    h = hashlib.blake2b(_enc(s.key), digest_size=8).digest()
    return int.from_bytes(h, "little", signed=True) or 1


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogatepass")


class PlanTable(Sequence):
    """The sample plan as flat columns instead of one Python object per sample.

    Row ``i`` is :class:`Sample` ``i``, rebuilt on access (``table[i]``) and equal to what was appended.
    A row costs a 63-byte record (with a key hash for duplicate checks) plus its text (a file path is stored once even when it is also the
    source; tar shard URLs once per shard); ``None`` fields are bits of the record's flag word.

    Args:
        samples: initial rows.
        on_disk: keep the columns in anonymous temporary files (see :mod:`.spill`) instead of memory.
        tmp_dir: folder for those files (default: ``TMPDIR`` / the system temporary folder).

    Iterating reads the columns in blocks; ``table[i]`` costs two reads. Call :meth:`seal` when the
    plan is complete (before DataLoader workers fork): it flushes the write buffers.
    """

    def __init__(self, samples=(), *, on_disk: bool = False, tmp_dir: str | os.PathLike | None = None):
        self._rec = ByteLog(on_disk, tmp_dir)
        self._text = ByteLog(on_disk, tmp_dir)
        self._urls: list[str] = []
        self._url_ids: dict[str, int] = {}
        self._dup_rows = np.zeros(0, np.int64)  # rows whose key an earlier row has (sorted), see mark_duplicates
        self._dup_first = np.zeros(0, np.int64)  # ... and that earlier row
        self.extend(samples)

    @property
    def on_disk(self) -> bool:
        return self._rec.on_disk

    def append(self, s: Sample) -> None:
        ld = s.load
        flags, idx, uid = 0, 0, 0
        a = b = c = None
        if ld is None:
            kind = _KIND_NONE
        elif isinstance(ld, FileRef):
            kind, a, b = _KIND_FILE, ld.path, ld.caption_path
        elif isinstance(ld, TarRef):
            kind, idx, b, c = _KIND_TAR, ld.index, ld.image_member, ld.caption_member
            uid = self._url_ids.get(ld.url)
            if uid is None:
                uid = self._url_ids[ld.url] = len(self._urls)
                self._urls.append(ld.url)
        elif isinstance(ld, (bytes, bytearray)):
            kind, a = _KIND_BYTES, bytes(ld)
        else:
            raise TypeError(f"Sample.load must be FileRef, TarRef, bytes or None, got {type(ld).__name__}")
        source = s.source
        if kind == _KIND_FILE and source == a:
            flags, source = flags | _SOURCE_IS_PATH, ""
        elif kind == _KIND_TAR and source == f"{ld.url}#{s.key}":
            flags, source = flags | _SOURCE_IS_TAR, ""
        parts, lengths = [], []
        for j, v in enumerate((s.key, source, a, b, c, s.caption, s.error, s.detail)):
            if v is None:
                flags |= 1 << j
                lengths.append(0)
            else:
                e = v if isinstance(v, bytes) else _enc(v)
                parts.append(e)
                lengths.append(len(e))
        off = self._text.append(b"".join(parts))
        self._rec.append(_REC.pack(off, *lengths, flags, kind, uid, idx, key_hash(s)))

    def extend(self, samples) -> None:
        for s in samples:
            self.append(s)

    def seal(self) -> PlanTable:
        """Flush the write buffers (call before forking readers). Returns ``self``."""
        self._rec.flush()
        self._text.flush()
        return self

    def __len__(self) -> int:
        return len(self._rec) // _REC.size

    def _rows(self, a: int, b: int):
        """Samples ``a..b-1`` with one read per column."""
        if b <= a:
            return []
        raw = self._rec.read(a * _REC.size, (b - a) * _REC.size)
        recs = [_REC.unpack_from(raw, k) for k in range(0, len(raw), _REC.size)]
        t0 = recs[0][0]
        last = recs[-1]
        text = self._text.read(t0, last[0] + sum(last[1:1 + _NF]) - t0)
        out = [self._sample(r, text, t0) for r in recs]
        lo, hi = np.searchsorted(self._dup_rows, (a, b))
        for i, first in zip(self._dup_rows[lo:hi].tolist(), self._dup_first[lo:hi].tolist()):
            s = out[i - a]
            out[i - a] = dataclasses.replace(s, error="duplicate_key", detail=(
                f"key {s.key!r} is already the key of plan row {first}; give each corpus once or make keys distinct"))
        return out

    def key_hashes(self, a: int, b: int) -> np.ndarray:
        """:func:`key_hash` of rows ``a..b-1`` (int64), one read."""
        return np.frombuffer(self._rec.read(a * _REC.size, (b - a) * _REC.size), _HASH)["hash"].copy()

    def mark_duplicates(self, rows, firsts) -> None:
        """Plan ``rows`` as skipped with reason ``duplicate_key`` (``firsts[j]``: the earlier row that has
        the key of ``rows[j]``). The records stay as appended; the reason is applied when rows are read.
        Costs 16 bytes of memory per marked row."""
        order = np.argsort(np.asarray(rows, np.int64), kind="stable")
        self._dup_rows = np.asarray(rows, np.int64)[order]
        self._dup_first = np.asarray(firsts, np.int64)[order]

    def _sample(self, rec, text: bytes, base: int) -> Sample:
        off, lengths, (flags, kind, uid, idx, _) = rec[0] - base, rec[1:1 + _NF], rec[1 + _NF:]
        fields = []
        for j, n in enumerate(lengths):
            fields.append(None if flags & (1 << j) else text[off:off + n])
            off += n
        key, source, a, b, c, caption, error, detail = (
            v if v is None or (j == 2 and kind == _KIND_BYTES) else _dec(v) for j, v in enumerate(fields))
        if kind == _KIND_FILE:
            load = FileRef(a, b)
        elif kind == _KIND_TAR:
            load = TarRef(self._urls[uid], idx, b, c)
        else:
            load = a
        if flags & _SOURCE_IS_PATH:
            source = a
        elif flags & _SOURCE_IS_TAR:
            source = f"{load.url}#{key}"
        return Sample(key=key, source=source, load=load, caption=caption, error=error, detail=detail)

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, slice):
            a, b, step = i.indices(n)
            if step == 1:
                return self._rows(a, max(a, b))
            return [self[k] for k in range(a, b, step)]
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"plan row {i} out of range (0..{n - 1})")
        return self._rows(i, i + 1)[0]

    def __iter__(self):
        n = len(self)
        for a in range(0, n, _BLOCK):
            yield from self._rows(a, min(a + _BLOCK, n))

    def nbytes(self) -> int:
        """Bytes of the plan (records + text + shard URLs), wherever they are kept."""
        return len(self._rec) + len(self._text) + sum(len(u) for u in self._urls)

    def nbytes_in_memory(self) -> int:
        """Bytes of the plan held in process memory (write buffers only when on disk)."""
        return (self._rec.nbytes_in_memory() + self._text.nbytes_in_memory() + sum(len(u) for u in self._urls)
                + self._dup_rows.nbytes + self._dup_first.nbytes)

    def close(self) -> None:
        """Release the temporary files (the table is unusable afterwards)."""
        self._rec.close()
        self._text.close()
