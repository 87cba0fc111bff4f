"""File-system primitives every package shares: atomic writes and advisory locks.

- ``atomic_write(path, write)``: the file appears complete or not at all (temp file in the same folder,
  fsync, ``os.replace``); a full disk or a read-only folder becomes one :class:`OutputError` naming the path.
- ``AdvisoryLock(folder, what)``: one process at a time per store or run folder. It is a ``flock`` on
  ``<folder>/.lock``, so the kernel releases it when the holder dies (a stale lock of a killed process
  is recovered by simply taking it); the file records who holds it, so a refusal names the holder.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cascadekit.codec.errors import InputError, OutputError

LOCK_NAME = ".lock"


def describe_os_error(exc: OSError, path: str | Path) -> str:
    """One sentence for an OSError while writing ``path`` (full disk, read-only, permissions, not a folder)."""
    hints = {
        errno.ENOSPC: "the disk is full: free space or choose another output folder",
        errno.EDQUOT: "the disk quota is exhausted: free space or choose another output folder",
        errno.EROFS: "the file system is read-only: choose another output folder",
        errno.EACCES: "permission denied: choose a folder you can write to",
        errno.EPERM: "permission denied: choose a folder you can write to",
        errno.ENOTDIR: "a path component is a file, not a folder",
        errno.EISDIR: "a folder stands where a file should be written",
    }
    return f"cannot write {path}: {hints.get(exc.errno, exc.strerror or str(exc))}"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, fsync it, then rename it onto ``path``.

    Readers see the old file or the complete new one, never a torn one. Raises OutputError (nothing left
    behind) when the folder is not writable or the disk fills up.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    except OSError as exc:
        raise OutputError(describe_os_error(exc, path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise OutputError(describe_os_error(exc, path)) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Atomically replace ``path`` with ``obj`` as JSON (+ newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def _unlink_quietly(p: str | Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


class LockedError(InputError):
    """Another live process holds the advisory lock of a store or run folder."""


class AdvisoryLock:
    """Exclusive advisory lock on a folder (``<folder>/.lock``), released on :meth:`release`, on exit of the
    ``with`` block, or by the kernel when the process dies.

    ``what`` names the folder in messages ("latent store", "training run"). Raises LockedError naming the
    holder (pid, host, command, since) when another process holds it.
    """

    def __init__(self, folder: str | Path, what: str = "folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> AdvisoryLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.path)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockedError(
                f"the {self.what} {self.folder} is in use by another process ({holder}); wait for it to "
                f"finish or stop it. A lock of a process that died is released automatically."
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> AdvisoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}: {info.get('command', '')}".strip()
