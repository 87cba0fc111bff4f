"""Append-only columns that live in memory or in an anonymous temporary file.

The builder's per-sample bookkeeping (the plan, bucket row lists) grows with the corpus. Kept on disk,
it costs page cache instead of process memory, so a build's peak RSS does not depend on how many
images it encodes. The files are anonymous (``tempfile.TemporaryFile``: unlinked as soon as they are
created, in ``TMPDIR`` or ``tmp_dir``): nothing is left behind, even when the job is killed.

Reads use ``os.pread`` on the file descriptor, which does not move a shared file position, so
DataLoader workers forked from the builder read the same columns concurrently. Pickling a spilled
column (``spawn`` start method) copies its bytes into memory.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np


def _spill_error(where: str, e: OSError) -> Exception:
    from cascadekit.codec.errors import InputError

    return InputError(f"cannot write temporary files in {where}: {e.strerror or e}; free space there or choose "
                      "another folder with --tmp-dir (Python: tmp_dir=) or the TMPDIR environment variable")


class ByteLog:
    """Append-only bytes: ``append(b) -> offset``, ``read(offset, n) -> bytes``.

    ``on_disk=False`` keeps them in a ``bytearray``. ``on_disk=True`` writes them to an anonymous
    temporary file in ``tmp_dir`` (default: the system temporary folder) through a ``flush_bytes``
    write buffer; reads of not yet flushed bytes flush first.
    """

    def __init__(self, on_disk: bool = False, tmp_dir: str | os.PathLike | None = None, flush_bytes: int = 1 << 16):
        self._mem: bytearray | None = None if on_disk else bytearray()
        self._file = None
        self._where = os.fspath(tmp_dir) if tmp_dir is not None else tempfile.gettempdir()
        if on_disk:
            try:
                self._file = tempfile.TemporaryFile(dir=tmp_dir, prefix="cascadekit-")
            except OSError as e:
                raise _spill_error(self._where, e) from e
        self._pending = bytearray()
        self._flushed = 0
        self._flush_bytes = flush_bytes

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def __len__(self) -> int:
        return len(self._mem) if self._mem is not None else self._flushed + len(self._pending)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Add ``data`` at the end; returns its offset."""
        off = len(self)
        if self._mem is not None:
            self._mem += data
        else:
            self._pending += data
            if len(self._pending) >= self._flush_bytes:
                self.flush()
        return off

    def flush(self) -> None:
        """Write buffered bytes to the file (a no-op in memory)."""
        if self._file is None or not self._pending:
            return
        view = memoryview(self._pending)
        while len(view):
            try:
                if hasattr(os, "pwrite"):
                    n = os.pwrite(self._file.fileno(), view, self._flushed)
                else:  # Windows
                    self._file.seek(self._flushed)
                    n = self._file.write(view)
            except OSError as e:  # e.g. the temporary folder is full
                raise _spill_error(self._where, e) from e
            self._flushed += n
            view = view[n:]
        view.release()
        self._pending = bytearray()

    def read(self, offset: int, n: int) -> bytes:
        """``n`` bytes from ``offset`` (raises ``IndexError`` past the end)."""
        if offset < 0 or n < 0 or offset + n > len(self):
            raise IndexError(f"read of {n} bytes at {offset} outside a log of {len(self)} bytes")
        if self._mem is not None:
            return bytes(self._mem[offset:offset + n])
        if offset + n > self._flushed:
            self.flush()
        fd = self._file.fileno()
        if not hasattr(os, "pread"):  # Windows: one process, no shared position to protect
            self._file.seek(offset)
            return self._file.read(n)
        parts, got = [], 0
        while got < n:
            b = os.pread(fd, n - got, offset + got)
            if not b:
                raise OSError(f"temporary column file ended early ({got} of {n} bytes at {offset})")
            parts.append(b)
            got += len(b)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def nbytes_in_memory(self) -> int:
        """Bytes this log holds in process memory (the buffer, or everything when in memory)."""
        return len(self._mem) if self._mem is not None else len(self._pending)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __getstate__(self):  # spawned workers: the anonymous file cannot be reopened, copy the bytes
        return {"data": self.read(0, len(self))}

    def __setstate__(self, state):
        self.__init__()
        self._mem += state["data"]


class IntLog:
    """Append-only int64 column on a :class:`ByteLog`: ``append``/``extend``, ``len``, ``[i]``, ``[a:b]`` (numpy)."""

    def __init__(self, on_disk: bool = False, tmp_dir: str | os.PathLike | None = None):
        self._log = ByteLog(on_disk, tmp_dir, flush_bytes=1 << 16)

    def append(self, v: int) -> None:
        self._log.append(int(v).to_bytes(8, "little", signed=True))

    def extend(self, values) -> None:
        self._log.append(np.ascontiguousarray(values, dtype="<i8").tobytes())

    def __len__(self) -> int:
        return len(self._log) // 8

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, slice):
            a, b, step = i.indices(n)
            if step != 1:
                raise IndexError("IntLog slices must be contiguous")
            b = max(a, b)
            return np.frombuffer(self._log.read(8 * a, 8 * (b - a)), dtype="<i8").astype(np.int64)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range (0..{n - 1})")
        return int.from_bytes(self._log.read(8 * i, 8), "little", signed=True)

    def __array__(self, dtype=None, copy=None):
        a = self[0:len(self)]
        return a if dtype is None else a.astype(dtype)

    def flush(self) -> None:
        self._log.flush()

    def close(self) -> None:
        self._log.close()
