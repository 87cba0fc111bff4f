"""Verified downloads of published weight files into a cache folder (stdlib only: metrics stands alone).

:func:`download_verified` streams a URL into a temporary file beside the destination, hashing it on the way;
the file is renamed into place only when its length matches the server's ``Content-Length`` and its SHA-256
matches the expected digest. Anything else (no network, an HTTP error, a truncated or tampered file) removes
the temporary file and raises :class:`DownloadError` naming the URL and the digest expected.

The expected digest is a full SHA-256 (64 hex digits) or, as torch.hub's ``check_hash`` does for files named
``name-<hash>.ext``, a prefix of at least 8 hex digits: that prefix is all torchvision and torch-fidelity
publish for their weight files.

When the network may be used is decided by :class:`DownloadSettings`: ``offline`` from the caller (``--offline``)
or the environment (``CASCADEKIT_OFFLINE``, ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``), and the
``CASCADEKIT_DOWNLOAD_BASE_URL`` override (a mirror, or a local test server) that replaces everything before the
file name of a URL. The override changes where bytes come from, never which digest they must have.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import MissingWeightsError

ENV_OFFLINE = "CASCADEKIT_OFFLINE"
ENV_BASE_URL = "CASCADEKIT_DOWNLOAD_BASE_URL"
OFFLINE_VARS = (ENV_OFFLINE, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
CHUNK = 1 << 20


class DownloadError(MissingWeightsError):
    """A download failed or gave a file that is not the published one; nothing was kept."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_reason(offline: bool = False) -> str | None:
    """Why the network must not be used (``"--offline"``, ``"CASCADEKIT_OFFLINE=1"``, ...), or None."""
    if offline:
        return "--offline"
    for var in OFFLINE_VARS:
        if _truthy(os.environ.get(var)):
            return f"{var}={os.environ[var]}"
    return None


@dataclass(frozen=True)
class DownloadSettings:
    """May files be fetched, and from where.

    offline: never touch the network (also implied by the environment variables above).
    base_url: replaces everything before the file name of each URL (default ``$CASCADEKIT_DOWNLOAD_BASE_URL``).
    timeout_s: socket timeout per request. progress: a tqdm bar on stderr while downloading.
    """

    offline: bool = False
    base_url: str | None = None
    timeout_s: float = 30.0
    progress: bool = True

    @classmethod
    def from_env(cls, offline: bool = False, **kw) -> "DownloadSettings":
        """Settings with ``base_url`` from ``$CASCADEKIT_DOWNLOAD_BASE_URL`` (when not given)."""
        base = kw.pop("base_url", None) or os.environ.get(ENV_BASE_URL) or None
        return cls(offline=offline, base_url=base, **kw)

    def offline_reason(self) -> str | None:
        return offline_reason(self.offline)

    def url_for(self, url: str) -> str:
        """``url`` with its folder replaced by ``base_url`` (when set)."""
        if not self.base_url:
            return url
        return self.base_url.rstrip("/") + "/" + url.rsplit("/", 1)[-1]

    def quiet(self) -> "DownloadSettings":
        return replace(self, progress=False)


def check_digest(expected: str) -> str:
    """Validate an expected digest: 8 to 64 lower-case hex digits (a SHA-256 or a published prefix of one)."""
    e = expected.strip().lower()
    if not (8 <= len(e) <= 64 and all(c in "0123456789abcdef" for c in e)):
        raise ValueError(f"expected SHA-256 must be 8 to 64 hex digits, got {expected!r}")
    return e


def describe_digest(expected: str) -> str:
    """``SHA-256 <hex>``, or ``SHA-256 beginning <hex>`` for a published prefix."""
    return f"SHA-256 {expected}" if len(expected) == 64 else f"SHA-256 beginning {expected}"


def _progress_bar(total: int | None, name: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm  # lazy: only when a download actually runs
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {name}", file=sys.stderr)


def _stream(resp, f, bar) -> tuple[int, str]:
    """Copy the response into ``f``; return (bytes, sha256 hex)."""
    h, n = hashlib.sha256(), 0
    while True:
        block = resp.read(CHUNK)
        if not block:
            break
        f.write(block)
        h.update(block)
        n += len(block)
        if bar is not None:
            bar.update(len(block))
    return n, h.hexdigest()


def download_verified(url: str, dest: str | os.PathLike, sha256: str,
                      settings: DownloadSettings | None = None) -> Path:
    """Download ``url`` (after ``settings.url_for``) to ``dest``, atomically, if its SHA-256 matches ``sha256``.

    Raises DownloadError (URL, expected digest, what went wrong) when offline, unreachable, truncated or
    tampered; in every failure no file is left at ``dest`` or beside it.
    """
    settings = settings or DownloadSettings.from_env()
    expected = check_digest(sha256)
    dest = Path(dest)
    src = settings.url_for(url)
    why = settings.offline_reason()
    if why:
        raise DownloadError(f"not downloading {src} ({why}); expected {describe_digest(expected)}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=str(dest.parent))
    except OSError as e:
        raise DownloadError(f"cannot write {dest.parent} to download {src}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            n, digest, total = _fetch(src, f, dest.name, settings, expected)
            f.flush()
            os.fsync(f.fileno())
        if total is not None and n != total:
            raise DownloadError(f"download of {src} is truncated ({n} of {total} bytes); it was removed. "
                                f"Expected {describe_digest(expected)}; try again")
        if not digest.startswith(expected):
            raise DownloadError(f"download of {src} has SHA-256 {digest}, expected {describe_digest(expected)}: "
                                "the file is corrupted or not the published one; it was removed")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _fetch(src: str, f, name: str, settings: DownloadSettings, expected: str) -> tuple[int, str, int | None]:
    """Stream ``src`` into ``f``: (bytes written, sha256 hex, Content-Length or None)."""
    bar = None
    try:
        with urllib.request.urlopen(src, timeout=settings.timeout_s) as resp:  # noqa: S310 - http(s) URLs we name
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _progress_bar(total, name, settings.progress)
            n, digest = _stream(resp, f, bar)
    except (urllib.error.URLError, OSError, ValueError) as e:  # no network, HTTP error, reset, bad URL
        http = isinstance(e, urllib.error.HTTPError)
        reason = f"HTTP {e.code} {e.reason}" if http else getattr(e, "reason", None) or e
        raise DownloadError(f"cannot download {src} ({reason}); expected {describe_digest(expected)}") from None
    finally:
        if bar is not None:
            bar.close()
    return n, digest, total
