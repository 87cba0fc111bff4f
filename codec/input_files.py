"""Reading input files safely: regular files only, a byte cap, and no open that can block.

Every path a user hands in (an image, a caption sidecar, a manifest entry, a tar shard) is read
through :func:`open_regular` / :func:`read_regular`:

1. ``os.stat`` (symlinks followed) must say *regular file*: FIFOs, character/block devices, sockets
   and directories are refused **before** they are opened (opening a device can have side effects,
   and a FIFO without a writer blocks ``open`` forever). A symlink to ``/dev/zero`` is refused the same way.
2. The file is opened with ``O_NONBLOCK`` and checked again with ``fstat`` on the open descriptor, so a
   FIFO swapped in between the two steps cannot block either (``O_NONBLOCK`` has no effect on regular files).
3. At most ``max_bytes`` are read (default :data:`DEFAULT_MAX_INPUT_BYTES`, 256 MiB): a file whose size
   is above the cap is refused from its ``st_size``, and a read stops at ``max_bytes + 1`` bytes, so a
   file that grows while it is read cannot exhaust memory either.

Failures raise :class:`InputFileError` (an :class:`~cascadekit.codec.errors.InputError`) whose
``reason`` is ``"not_a_file"`` (FIFO, device, socket), ``"too_large"`` or ``"unreadable"`` (missing,
permission, a directory).
"""
from __future__ import annotations

import os
import stat
from typing import BinaryIO

from cascadekit.codec.errors import InputError

__all__ = ["DEFAULT_MAX_INPUT_BYTES", "InputFileError", "open_regular", "read_regular", "check_regular",
           "file_kind", "format_bytes"]

#: Default cap on the bytes read from one input file (or one tar member): 256 MiB.
DEFAULT_MAX_INPUT_BYTES = 256 * 1024 * 1024

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISLNK, "a symbolic link"))


class InputFileError(InputError):
    """An input path cannot be read. ``reason``: ``not_a_file``, ``too_large`` or ``unreadable``."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def file_kind(mode: int) -> str:
    """``'a FIFO (named pipe)'``, ``'a character device'``, ... for an ``st_mode`` (``'a regular file'``)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def format_bytes(n: int) -> str:
    """``268435456`` -> ``'256 MiB'`` (binary units, at most one decimal)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{n} bytes"


def _refuse_kind(path: str, mode: int) -> InputFileError:
    link = ""
    if os.path.islink(path):
        link = f" (a symlink to {os.path.realpath(path)})"
    # a directory is the classic "cannot read this path" mistake; FIFOs, devices and sockets are not_a_file
    reason = "unreadable" if stat.S_ISDIR(mode) else "not_a_file"
    return InputFileError(reason, f"{path}{link} is {file_kind(mode)}, not a regular file; only regular "
                                  "files are read as inputs (remove it or point at the real file)")


def _too_large(path: str, size: int | str, max_bytes: int) -> InputFileError:
    return InputFileError("too_large", f"{path} is {size if isinstance(size, str) else format_bytes(size)}, above "
                                       f"the input cap of {format_bytes(max_bytes)} ({max_bytes} bytes); raise "
                                       "--max-input-bytes (Python: max_input_bytes=) if it is a legitimate input")


def _unreadable(path: str, e: OSError) -> InputFileError:
    return InputFileError("unreadable", f"cannot read {path}: {e.strerror or e}")


def check_regular(path: str | os.PathLike, max_bytes: int | None = None) -> os.stat_result:
    """``os.stat`` of ``path`` if it is a regular file (of at most ``max_bytes``); else :class:`InputFileError`.

    Opens nothing. Symlinks are followed (a link to a regular file is fine, a link to a device is not).
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise _unreadable(path, e) from e
    if not stat.S_ISREG(st.st_mode):
        raise _refuse_kind(path, st.st_mode)
    if max_bytes is not None and st.st_size > max_bytes:
        raise _too_large(path, st.st_size, max_bytes)
    return st


def open_regular(path: str | os.PathLike, max_bytes: int | None = None) -> BinaryIO:
    """Open a regular file for binary reading without any chance of blocking (see the module docstring).

    ``max_bytes`` refuses a file whose size is above it (``None``: no size check, e.g. a tar shard,
    whose members are capped one by one). The caller closes the returned file object.
    """
    path = os.fspath(path)
    check_regular(path, max_bytes)  # before opening: never open a device or a FIFO
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise _unreadable(path, e) from e
    try:
        st = os.fstat(fd)  # the file actually opened (it may have been swapped since the stat)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse_kind(path, st.st_mode)
        if max_bytes is not None and st.st_size > max_bytes:
            raise _too_large(path, st.st_size, max_bytes)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES) -> bytes:
    """All bytes of the regular file ``path``, at most ``max_bytes`` (else ``too_large``; ``None``: no cap)."""
    path = os.fspath(path)
    with open_regular(path, max_bytes) as f:
        try:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as e:
            raise _unreadable(path, e) from e
    if max_bytes is not None and len(data) > max_bytes:  # it grew after the fstat
        raise _too_large(path, f"more than {format_bytes(max_bytes)}", max_bytes)
    return data
