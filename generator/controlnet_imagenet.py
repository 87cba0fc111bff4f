"""torchvision's ImageNet EfficientNetV2-S weights for a ControlNet's effnet backbone (the official start).

The file is torchvision's own (``EfficientNet_V2_S_Weights.DEFAULT``: its URL, its file name
``efficientnet_v2_s-<sha256 prefix>.pth``) in ``torch.hub.get_dir()/checkpoints``, where torchvision caches it.
:func:`imagenet_features` uses the cached file, else downloads it once into that cache:

* never while offline (``CASCADEKIT_OFFLINE`` / ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``);
* the answer to the request is awaited at most ``connect_timeout_s`` (name lookup included: the request runs in a
  daemon thread, so an unreachable resolver cannot hang a training start), each read at most ``read_timeout_s``;
* the bytes stream into a temporary file beside the destination, hashed on the way, and are kept only when the
  SHA-256 starts with the prefix in the file name (torch.hub's ``check_hash`` rule) and the length matches.

Every failure is a reason string, never an exception: the caller falls back to another start and logs why.
Files are read with ``torch.load(weights_only=True)`` and must hold EfficientNetV2-S ``features`` tensors.
"""
from __future__ import annotations

import hashlib
import queue
import re
import threading
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import torch
import torchvision

from cascadekit.codec.errors import OutputError
from cascadekit.codec.fsio import atomic_write
from cascadekit.codec.weights.hub import offline_reason

TORCHVISION_URL = torchvision.models.EfficientNet_V2_S_Weights.DEFAULT.url
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
CHUNK = 1 << 20


class DownloadFailed(Exception):
    """Why a download gave no file (internal: :func:`imagenet_features` turns it into its reason)."""


@dataclass(frozen=True)
class ImageNetWeights:
    """Where the weights come from: ``url`` (its last path part is the cache file name) and the timeouts."""

    url: str
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S

    @classmethod
    def torchvision(cls) -> "ImageNetWeights":
        """torchvision's EfficientNetV2-S ImageNet file (``EfficientNet_V2_S_Weights.DEFAULT``)."""
        return cls(TORCHVISION_URL, CONNECT_TIMEOUT_S, READ_TIMEOUT_S)

    @property
    def file_name(self) -> str:
        return Path(urlparse(self.url).path).name

    @property
    def sha256_prefix(self) -> str:
        m = re.search(r"-([a-f0-9]{8,})\.", self.file_name)
        return m.group(1) if m else ""

    def cache_path(self) -> Path:
        """``torch.hub.get_dir()/checkpoints/<file name>`` (``$TORCH_HOME`` is read now)."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name


def imagenet_features(source: ImageNetWeights | None = None, download: bool = True
                      ) -> tuple[dict[str, torch.Tensor] | None, str]:
    """``(features state dict, where it came from)``, or ``(None, why not)`` (module docstring).

    The state dict is that of ``efficientnet_v2_s().features`` (keys ``0.0.weight`` ...), tensors on the CPU as
    stored (every key and shape checked).
    """
    source = source or ImageNetWeights.torchvision()
    path, how = source.cache_path(), "torch hub cache"
    if not path.is_file():
        why_not = offline_reason() if download else "downloads not allowed here"
        if why_not:
            return None, f"not in the torch hub cache ({path}) and not downloaded ({why_not})"
        try:
            _download(source, path)
        except (DownloadFailed, OutputError, OSError) as e:
            return None, f"not in the torch hub cache ({path}) and could not be downloaded from {source.url} ({e})"
        how = f"downloaded from {source.url} into the torch hub cache"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a bad file (pickle, zip, EOF, ...)
        return None, f"the cached file {path} cannot be read as weights ({type(e).__name__}: {e})"
    features = {k[len("features."):]: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")} \
        if isinstance(state, dict) else {}
    problem = _shape_problem(features)
    if problem:
        return None, f"the cached file {path} does not hold EfficientNetV2-S weights ({problem})"
    return features, f"{how}: {path}"


def _shape_problem(features: dict[str, torch.Tensor]) -> str:
    """'' when ``features`` has every key and shape of ``efficientnet_v2_s().features`` (built on meta)."""
    with torch.device("meta"):
        want = torchvision.models.efficientnet_v2_s(weights=None).features.state_dict()
    missing = sorted(set(want) - set(features))
    if missing:
        return f"{len(missing)} of its {len(want)} features tensors missing, e.g. features.{missing[0]}"
    wrong = [k for k, v in want.items() if not isinstance(features[k], torch.Tensor) or features[k].shape != v.shape]
    if not wrong:
        return ""
    got = features[wrong[0]]
    got = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
    return f"features.{wrong[0]} is {got}, not a tensor of shape {tuple(want[wrong[0]].shape)}"


def _open(source: ImageNetWeights):
    """The HTTP response, awaited at most ``connect_timeout_s`` (the request runs in a daemon thread)."""
    answer: queue.Queue = queue.Queue(maxsize=1)

    def request() -> None:
        try:
            answer.put((urllib.request.urlopen(source.url, timeout=source.read_timeout_s), None))
        except BaseException as e:  # handed to the waiting caller
            answer.put((None, e))

    threading.Thread(target=request, name="imagenet-weights-request", daemon=True).start()
    try:
        response, error = answer.get(timeout=source.connect_timeout_s)
    except queue.Empty:
        raise DownloadFailed(f"no answer within {source.connect_timeout_s:g} s") from None
    if error is not None:
        raise DownloadFailed(f"{type(error).__name__}: {error}") from None
    return response


def _chunks(response, read_timeout_s: float):
    """The response body in chunks; a stalled or broken read is a DownloadFailed (not an OSError, which
    ``atomic_write`` would report as a write error)."""
    while True:
        try:
            chunk = response.read(CHUNK)
        except TimeoutError:
            raise DownloadFailed(f"a read stalled for {read_timeout_s:g} s") from None
        except (OSError, HTTPException) as e:  # connection reset, truncated chunked body, ...
            raise DownloadFailed(f"{type(e).__name__}: {e}") from None
        if not chunk:
            return
        yield chunk


def _download(source: ImageNetWeights, path: Path) -> None:
    """Stream ``source.url`` into ``path`` (atomic; kept only with the expected length and SHA-256 prefix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open(source) as response:
        length = response.headers.get("Content-Length")

        def write(f: IO[bytes]) -> None:
            digest, size = hashlib.sha256(), 0
            for chunk in _chunks(response, source.read_timeout_s):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            if length is not None and size != int(length):
                raise DownloadFailed(f"got {size} bytes of {length}")
            if not digest.hexdigest().startswith(source.sha256_prefix):
                raise DownloadFailed(f"SHA-256 {digest.hexdigest()[:16]}... does not start with the published "
                                     f"{source.sha256_prefix!r}: not kept")

        atomic_write(path, write)


__all__ = ["ImageNetWeights", "imagenet_features"]
