"""Latent stores in object storage: fsspec URLs (``s3://bucket/corpus.zarr``, ``gs://...``, ``memory://...``)
wherever a store path is accepted.

* :func:`store_path` turns a store argument into a :class:`pathlib.Path` (local paths and ``file://`` URLs: every
  local behaviour stays as it is) or a :class:`RemotePath` (any other URL), the small part of the ``Path`` API
  the store code uses, over an fsspec file system.
* :func:`zarr_store` opens either as a Zarr v3 store (``zarr.storage.FsspecStore`` for URLs). Object stores write
  each chunk object whole (one PUT), so the store's rule "status last" keeps readers and resumes correct there too.
* Credentials come from the usual places only (``AWS_*`` variables, ``~/.aws``, fsspec's config such as
  ``FSSPEC_S3_ENDPOINT_URL``), or, in Python, from ``RemotePath(url, storage_options={...})``. They are never
  part of ``str(path)``, so they reach no store attribute, log line or error message.
* Locks: a ``flock`` does not exist on object storage. :func:`store_lock` takes the usual
  :class:`~cascadekit.codec.fsio.AdvisoryLock` on local stores and, on object stores, no lock: it warns once that
  two writers of one store must not run at the same time (chunks are owned whole, but two builds would race).
"""
from __future__ import annotations

import fnmatch
import os
import re
import tempfile
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import fsspec

from cascadekit.codec.errors import DependencyError, InputError
from cascadekit.codec.fsio import AdvisoryLock

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def is_url(path) -> bool:
    """Whether ``path`` is a URL of an fsspec file system other than ``file://`` (or already a RemotePath)."""
    if isinstance(path, RemotePath):
        return True
    m = _SCHEME.match(str(path)) if isinstance(path, str) else None
    return bool(m) and m.group(1).lower() not in ("file", "local")


def store_path(path, storage_options: dict | None = None):
    """A store argument as a ``Path`` (local path or ``file://`` URL) or a :class:`RemotePath` (other URLs)."""
    if isinstance(path, RemotePath):
        return path
    if isinstance(path, str) and _SCHEME.match(path) and not is_url(path):
        return Path(unquote(urlsplit(path).path))
    if is_url(path):
        return RemotePath(path, storage_options)
    return Path(path)


def redact(url: str) -> str:
    """``url`` without a ``user:password@`` part (what may appear in messages and attributes)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/@]*@", r"\1***@", url)


def _url_to_fs(url: str, storage_options: dict):
    """fsspec's (file system, path) for ``url``; a missing backend package is a DependencyError saying what to
    install (``cascadekit[s3]`` for s3://)."""
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as e:
        hint = "pip install 'cascadekit[s3]'" if url.startswith("s3") else "install the fsspec backend it names"
        raise DependencyError(f"{redact(url)}: {e} ({hint})") from None
    except ValueError as e:  # an unknown protocol
        raise InputError(f"{redact(url)}: {e}") from None


class RemotePath:
    """A file or folder in an fsspec file system, with the part of :class:`pathlib.Path` the store code uses.

    ``url``: ``protocol://bucket/key...``; ``storage_options``: passed to fsspec (credentials, endpoint), never
    shown. Folders are key prefixes: ``mkdir`` creates nothing on object stores.
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs, self.path = _url_to_fs(self.url, self.storage_options)
        self._pid = os.getpid()
        self.protocol = self.url.split("://", 1)[0]

    # ------------------------------------------------------------------ naming
    def __str__(self) -> str:
        return redact(self.url)

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, name) -> RemotePath:
        return self._child(str(name).strip("/"))

    @classmethod
    def on(cls, fs, path: str, protocol: str, storage_options: dict | None = None) -> RemotePath:
        """The object / prefix ``path`` of an existing fsspec file system ``fs`` (no new client)."""
        p = cls.__new__(cls)
        p._fs, p._pid, p.path, p.protocol = fs, os.getpid(), path.rstrip("/"), protocol
        p.storage_options = dict(storage_options or {})
        p.url = f"{protocol}://{p.path}"
        return p

    def _child(self, rel: str) -> RemotePath:
        p = RemotePath.on(self.fs, f"{self.path}/{rel}", self.protocol, self.storage_options)
        p.url = f"{self.url}/{rel}"  # keeps any user part of the URL
        return p

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        p = RemotePath.on(self.fs, self.path.rsplit("/", 1)[0], self.protocol, self.storage_options)
        p.url = self.url.rsplit("/", 1)[0]
        return p

    @property
    def fs(self):
        """The fsspec file system, made again in a forked or unpickled process (s3fs clients are not fork-safe;
        fsspec's instance cache is per process), e.g. in ``LatentDataset``'s DataLoader workers."""
        if self._fs is None or self._pid != os.getpid():
            self._fs = _url_to_fs(self.url, self.storage_options)[0]
            self._pid = os.getpid()
        return self._fs

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None}

    # ------------------------------------------------------------------ queries (never from a stale listing)
    def _fresh(self) -> None:
        self.fs.invalidate_cache()

    @contextmanager
    def _reaching(self):
        """Backend failures (no credentials, endpoint down, access denied) as one InputError naming the URL."""
        try:
            yield
        except (FileNotFoundError, InputError):
            raise
        except PermissionError as e:
            raise InputError(f"{self}: access denied ({_short(e)}); check the credentials' permissions") from None
        except Exception as e:  # noqa: BLE001 - botocore / aiohttp / gcsfs errors are not OSErrors
            raise InputError(f"cannot reach {self} ({type(e).__name__}: {_short(e)}); check the endpoint, the "
                             "network and the credentials (AWS_* variables, ~/.aws, fsspec config)") from None

    def exists(self) -> bool:
        self._fresh()
        with self._reaching():
            return bool(self.fs.exists(self.path))

    def is_file(self) -> bool:
        self._fresh()
        with self._reaching():
            return bool(self.fs.isfile(self.path))

    def is_dir(self) -> bool:
        self._fresh()
        with self._reaching():
            return bool(self.fs.isdir(self.path))

    def is_symlink(self) -> bool:
        return False

    def iterdir(self):
        self._fresh()
        with self._reaching():
            found = sorted(self.fs.ls(self.path, detail=False))
        for p in found:
            rel = str(p).rstrip("/").rsplit("/", 1)[-1]
            if rel:
                yield self._child(rel)

    def rglob(self, pattern: str):
        self._fresh()
        for p in sorted(self.fs.find(self.path)):
            rel = str(p)[len(self.path):].strip("/")
            if fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern):
                yield self._child(rel)

    def stat(self):
        """``st_size`` of the object (FileNotFoundError when there is none)."""
        self._fresh()
        return SimpleNamespace(st_size=int(self.fs.info(self.path)["size"]))

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def size(self) -> int:
        """Bytes of every object under this prefix (``inspect``'s disk size)."""
        self._fresh()
        return int(self.fs.du(self.path, total=True))

    # ------------------------------------------------------------------ changes
    def write_bytes(self, data: bytes) -> None:
        self.fs.pipe_file(self.path, data)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.fs.makedirs(self.path, exist_ok=True)  # object stores: nothing to create

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        if self.exists():
            self.fs.rm(self.path, recursive=True)


def zarr_store(path, read_only: bool = False):
    """The Zarr v3 store of a store location: a path string (zarr's LocalStore) or an ``FsspecStore``."""
    if isinstance(path, RemotePath):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(path.url, storage_options=path.storage_options or None, read_only=read_only)
    return str(path)


def rmtree(path) -> None:
    """Delete a folder or prefix and everything under it."""
    if isinstance(path, RemotePath):
        path.rmtree()
    else:
        import shutil

        shutil.rmtree(path)


def check_writable(path: RemotePath) -> None:
    """Before any work: the bucket of ``path`` exists and accepts writes (a probe object is written and removed).
    InputError saying which, naming the URL (never credentials)."""
    bucket = path.path.split("/", 1)[0]
    probe = path / f".cascadekit-write-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except FileNotFoundError:  # s3fs / gcsfs: NoSuchBucket
        raise InputError(f"the bucket {bucket!r} of {path} does not exist; create it first or choose another "
                         "--out") from None
    except PermissionError as e:
        raise InputError(f"{path} refuses writes ({type(e).__name__}: {_short(e)}); check the credentials' "
                         "permissions or choose another --out") from None
    except Exception as e:  # noqa: BLE001 - endpoint / network errors of any fsspec backend
        raise InputError(f"cannot write to {path} ({type(e).__name__}: {_short(e)}); check the endpoint, the "
                         "network and the credentials") from None


def _short(e: BaseException) -> str:
    return redact(str(e).splitlines()[0] if str(e) else "")[:200]


class _NoLock:
    """Stands in for the advisory lock on object stores (see the module docstring)."""

    held = True

    def acquire(self) -> _NoLock:
        return self

    def release(self) -> None:
        pass

    def __enter__(self) -> _NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def store_lock(path, what: str = "latent store"):
    """The lock for writing the store at ``path`` (not yet acquired): an AdvisoryLock on local folders, nothing on
    object stores (with a warning: run one writer at a time there)."""
    if isinstance(path, RemotePath):
        warnings.warn(f"{path} is in object storage, where stores have no lock: make sure no other process writes "
                      f"this {what} at the same time", stacklevel=2)
        return _NoLock()
    return AdvisoryLock(path, what)


def write_via_local(target, write):
    """``write(local_path)`` writes a file; for a RemotePath ``target`` it writes a temporary local file that is
    then uploaded as one object. Returns ``target``."""
    if not isinstance(target, RemotePath):
        write(target)
        return target
    with tempfile.TemporaryDirectory(prefix="cascadekit-upload-") as d:
        local = Path(d) / target.name
        write(local)
        target.write_bytes(local.read_bytes())
    return target


def store_label(zstore) -> str:
    """A zarr store's location for messages: the folder of a LocalStore, the (redacted) URL of an FsspecStore."""
    root = getattr(zstore, "root", None)
    if root is not None:
        return str(root)
    fs, p = getattr(zstore, "fs", None), getattr(zstore, "path", "")
    proto = fs.protocol[0] if fs is not None and isinstance(fs.protocol, (tuple, list)) else getattr(fs, "protocol", "")
    return redact(f"{proto}://{p}" if proto else str(p))


def chunk_location(zstore, key: str):
    """The file (Path) or object (RemotePath) holding ``key`` of a zarr store, for presence / checksum checks."""
    root = getattr(zstore, "root", None)
    if root is not None:
        return Path(root) / key
    fs = zstore.fs
    sync_fs = type(fs)(**{**fs.storage_options, "asynchronous": False})  # fsspec caches the instance
    options = {k: v for k, v in fs.storage_options.items() if k != "asynchronous"}
    return RemotePath.on(sync_fs, f"{zstore.path}/{key}", store_label(zstore).split("://", 1)[0], options)


__all__ = ["RemotePath", "check_writable", "chunk_location", "is_url", "redact", "rmtree", "store_label",
           "store_lock", "store_path", "write_via_local", "zarr_store"]
