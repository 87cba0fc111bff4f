"""Chunk integrity: is the chunk file behind some rows of a store array there, and is it intact?

Every chunked array of a version-2 store is written with zarr v3's ``crc32c`` codec (a checksum of the
compressed chunk bytes appended to the file) and with ``write_empty_chunks``, so each written chunk has a
file (callers decide for which arrays a missing file is an error). Two levels of checking:

* *presence* (``deep=False``): one ``stat`` per chunk; finds deleted and empty chunk files. Cheap: readers
  run it for the chunks behind every row they will use.
* *deep* (``deep=True``): also reads the file and compares its checksum (a version-1 store has none: the
  chunk is decoded instead). Finds truncated and bit-flipped chunks; costs one read of the chunk.

A missing chunk cannot be told apart from a fill value by zarr itself (it returns zeros), which is why the
checks look at the files. This module knows nothing of statuses: callers say which chunks matter.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from cascadekit.datasets.remote import chunk_location

MISSING, DAMAGED = "missing", "damaged"


@dataclass(frozen=True)
class ChunkProblem:
    """A missing or damaged chunk: rows ``rows[0]..rows[1]-1`` of ``array`` in sample group ``group``."""

    group: str
    array: str
    chunk: int
    rows: tuple[int, int]
    kind: str  # MISSING or DAMAGED
    detail: str

    def describe(self) -> str:
        where = f"{self.group}/{self.array}" if self.group else self.array
        return f"{where} chunk {self.chunk} (rows {self.rows[0]}..{self.rows[1] - 1}): {self.kind} ({self.detail})"


def chunk_rows_of(arr) -> int:
    return int(arr.chunks[0])


def chunk_span(arr, i: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` that chunk ``i`` of ``arr`` holds (chunks are whole along the other axes)."""
    c = chunk_rows_of(arr)
    return i * c, min((i + 1) * c, int(arr.shape[0]))


def chunk_file(arr, i: int) -> Path:
    """The file of row chunk ``i`` of ``arr``: a Path in a local store, a RemotePath (same calls) in object storage."""
    key = arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
    return chunk_location(arr.store, f"{arr.path}/{key}")


def crc32c_ok(raw) -> bool:
    """True when the last 4 bytes of a chunk file's contents (bytes, or a uint8 numpy array) are the little-endian
    crc32c of the rest (what zarr v3's ``crc32c`` codec appends)."""
    return len(raw) >= 5 and np.uint32(google_crc32c.value(raw[:-4])).tobytes() == bytes(raw[-4:])


def has_checksum(arr) -> bool:
    return any(type(c).__name__ == "Crc32cCodec" for c in arr.compressors)


def chunk_state(arr, i: int, deep: bool = False) -> tuple[str, str] | None:
    """``None`` when chunk ``i`` of ``arr`` is fine, else ``(MISSING | DAMAGED, detail)``."""
    path = chunk_file(arr, i)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return MISSING, "chunk file deleted or never written"
    except OSError as e:
        return DAMAGED, f"cannot stat the chunk file: {e.strerror or e}"
    if size == 0:
        return DAMAGED, "empty chunk file"
    if not deep:
        return None
    if has_checksum(arr):
        try:
            raw = path.read_bytes()
        except OSError as e:
            return DAMAGED, f"cannot read the chunk file: {e.strerror or e}"
        if not crc32c_ok(raw):
            return DAMAGED, "crc32c checksum mismatch (truncated or overwritten)"
        return None
    a, b = chunk_span(arr, i)
    try:
        np.asarray(arr[a:b])
    except Exception as e:  # noqa: BLE001 - any decoding failure of an unchecksummed (version 1) chunk
        return DAMAGED, f"cannot be decoded: {type(e).__name__}"
    return None


def chunks_of_rows(arr, rows: np.ndarray) -> np.ndarray:
    """Sorted chunk indices of ``arr`` that hold ``rows`` (int array of row numbers)."""
    return np.unique(np.asarray(rows, np.int64) // chunk_rows_of(arr))


def bad_chunks(arr, chunks, deep: bool = False, group: str = "", name: str | None = None) -> list[ChunkProblem]:
    """The problems among chunk indices ``chunks`` of ``arr`` (see :func:`chunk_state`)."""
    out = []
    for i in map(int, chunks):
        st = chunk_state(arr, i, deep)
        if st is not None:
            out.append(ChunkProblem(group, name or arr.path.rsplit("/", 1)[-1], i, chunk_span(arr, i), *st))
    return out


def rows_mask(problems: list[ChunkProblem], start: int, stop: int) -> np.ndarray:
    """Boolean mask over rows ``start..stop-1``: True where a problem's chunk holds the row."""
    m = np.zeros(stop - start, bool)
    for p in problems:
        a, b = max(p.rows[0], start), min(p.rows[1], stop)
        if a < b:
            m[a - start:b - start] = True
    return m
