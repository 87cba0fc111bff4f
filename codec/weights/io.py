"""Read checkpoint files into ``{name: tensor}`` dicts, safely.

* ``.safetensors``: the header is validated before anything is loaded (8-byte length, JSON header,
  every tensor's byte range against its dtype/shape, contiguous non-overlapping ranges, the file
  size), so truncated or corrupt files raise :class:`WeightsError` naming the file and the problem
  instead of a bare Rust panic. Tensors are then read with plain file reads straight into their own
  ``torch.empty`` buffers, one at a time and in file order: no memory map, so the process holds
  just the tensors (peak RSS ~ file size, not file + mapped pages) and the loaded weights never
  change or fault if the file is later modified.
* ``*.safetensors.index.json``: a sharded diffusers/transformers checkpoint; every shard listed in
  ``weight_map`` is read and each key must come from the shard the index names.
* ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``: only through ``torch.load(weights_only=True)``, which
  refuses arbitrary pickled objects (no code from the file is ever executed). A nested
  ``{"state_dict": {...}}`` (Lightning) is unwrapped.

:func:`sha256_file` hashes in 1 MiB chunks and remembers results per (path, size, mtime) in memory.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import re
import struct
import sys
from pathlib import Path

import torch

from cascadekit.codec.errors import WeightsError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

# bytes per element for every safetensors dtype code
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "C64": 8,
}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit

# safetensors dtype code -> torch dtype, for the codes this torch build can hold
_TORCH_DTYPES = {
    code: getattr(torch, name)
    for code, name in {
        "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
        "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "I64": "int64", "U64": "uint64",
        "F64": "float64", "C64": "complex64", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    }.items()
    if hasattr(torch, name)
}


def _check_path(path: Path) -> None:
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if path.is_dir():
        raise WeightsError(
            f"{path} is a directory, not a weights file; pass a .safetensors file, an index.json, "
            "or use load_weights() for a diffusers model folder"
        )
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty (0 bytes); the download or copy was interrupted, fetch it again")


def safetensors_header(path: str | os.PathLike) -> dict:
    """Return the validated JSON header of a ``.safetensors`` file (``{name: {dtype, shape, data_offsets}}``).

    Raises :class:`WeightsError` if the file is truncated, padded, or its header is not valid.
    """
    path = Path(path)
    _check_path(path)
    size = path.stat().st_size
    header, n = _read_header(path, size)
    _check_spans(path, header, size - 8 - n, size, n)
    return header


def _read_header(path: Path, size: int) -> tuple[dict, int]:
    """(the parsed JSON header, its length n) of the safetensors file ``path`` of ``size`` bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: truncated safetensors file ({size} bytes, the 8-byte header length is incomplete)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise WeightsError(f"{path}: corrupt safetensors header length {n} (more than 100 MB); not a safetensors file?")
        if 8 + n > size:
            raise WeightsError(
                f"{path}: header length {n} is larger than the file ({size} bytes); the file is truncated or not safetensors"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: the safetensors JSON header is not valid ({e}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    return header, n


def _check_spans(path: Path, header: dict, data: int, size: int, n: int) -> None:
    """Every tensor's byte range fits its dtype and shape, the ranges tile the ``data`` bytes after the header."""
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = info["dtype"], info["shape"], info["data_offsets"]
            start, stop = int(start), int(stop)
            numel = 1
            for s in shape:
                if int(s) < 0:
                    raise ValueError("negative dimension")
                numel *= int(s)
            width = _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: malformed header entry for tensor {name!r}: {info!r}") from None
        if stop - start != numel * width or start > stop:
            raise WeightsError(
                f"{path}: tensor {name!r} ({dtype} {shape}) should take {numel * width} bytes but its "
                f"offsets [{start}, {stop}) span {stop - start}; the file is corrupt"
            )
        spans.append((start, stop, name))
    end = 0  # the ranges must tile [0, end) in order, as the safetensors format requires
    for start, stop, name in sorted(spans):
        if start != end:
            raise WeightsError(
                f"{path}: tensor {name!r} starts at data byte {start} but the previous tensor ends at {end} "
                "(overlapping or gapped offsets); the file is corrupt"
            )
        end = stop
    if data < end:
        raise WeightsError(
            f"{path}: truncated: the header describes {end} bytes of tensor data but only {data} are present "
            f"(file is {size} bytes, expected {8 + n + end}); download it again"
        )
    if data > end:
        raise WeightsError(f"{path}: {data - end} unexpected trailing bytes after the tensor data; the file is corrupt")


def _read_into(f, buf, path: Path, name: str) -> None:
    """Fill the writable byte buffer ``buf`` from the current position of the unbuffered file ``f``."""
    view = memoryview(buf).cast("B")
    got = 0
    while got < len(view):
        k = f.readinto(view[got:])
        if not k:
            raise WeightsError(
                f"{path}: the file ended while reading tensor {name!r} (it was truncated or changed while "
                "loading); check the file and load it again"
            )
        got += k


def _read_safetensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    """Validated header, then each tensor read into its own buffer (file order), moved to ``device``.

    Keys are returned sorted, as ``safetensors.safe_open`` lists them.
    """
    header = safetensors_header(path)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if sys.byteorder != "little" or any(v["dtype"] not in _TORCH_DTYPES for v in entries.values()):
        return _read_safetensors_mmap(path, device)
    on_cpu = torch.device(device).type == "cpu"
    out: dict[str, torch.Tensor] = {}
    try:
        with open(path, "rb", buffering=0) as f:
            (n,) = struct.unpack("<Q", f.read(8))
            for name, info in sorted(entries.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                start, stop = info["data_offsets"]
                t = torch.empty([int(s) for s in info["shape"]], dtype=_TORCH_DTYPES[info["dtype"]])
                if stop > start:
                    f.seek(8 + n + start)
                    _read_into(f, t.reshape(-1).view(torch.uint8).numpy(), path, name)
                out[name] = t if on_cpu else t.to(device)
                del t
    except (OSError, struct.error) as e:
        raise WeightsError(f"{path}: could not read safetensors file: {e}") from None
    return {k: out[k] for k in sorted(out)}


def _read_safetensors_mmap(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    """Fallback through ``safetensors.safe_open`` (memory-mapped) for big-endian hosts or dtypes torch lacks."""
    from safetensors import safe_open

    try:
        out = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
        return out
    except Exception as e:  # safetensors raises its own SafetensorError for anything left
        raise WeightsError(f"{path}: could not read safetensors file: {e}") from None


def _pickled_global(e: Exception) -> str:
    """' (first one: module.Name)' from torch's weights-only refusal, without its advice to unpickle anyway."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    return f" (first one: {m.group(1)})" if m else ""


def _read_torch(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: refused to load: the file contains pickled Python objects other than tensors{_pickled_global(e)}. "
            "cascadekit never unpickles (unpickling can run arbitrary code) and has no option to. If you trust "
            "the file, convert its tensors to .safetensors in a separate, trusted environment and pass that file."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {e}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: entries that are not named tensors: {bad[:8]}")
    return obj


def _read_index(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        index = json.loads(path.read_text())
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict)
    except (json.JSONDecodeError, KeyError, AssertionError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: not a valid sharded-checkpoint index (needs a 'weight_map' object): {e}") from None
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (path.parent / s).is_file()]
    if missing:
        raise WeightsError(f"{path}: shard file(s) listed in the index are missing from {path.parent}: {missing}")
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = read_state_dict(path.parent / shard, device)
        wanted = {k for k, s in weight_map.items() if s == shard}
        absent = wanted - part.keys()
        if absent:
            raise WeightsError(f"{path.parent / shard}: lacks {len(absent)} key(s) the index assigns to it, e.g. {sorted(absent)[:5]}")
        for k in wanted:
            out[k] = part[k]
    return out


def read_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read one checkpoint file into ``{key: tensor}`` on ``device`` (dtypes as stored).

    Accepts ``.safetensors``, ``*.safetensors.index.json`` (sharded) and ``.pt/.pth/.bin/.ckpt``
    (``torch.load(weights_only=True)`` only). Missing, empty, truncated or corrupt files and
    directories raise :class:`WeightsError` naming the file and the problem.
    """
    path = Path(path)
    _check_path(path)
    name = path.name.lower()
    if name.endswith(".safetensors"):
        return _read_safetensors(path, device)
    if name.endswith(".index.json") or name.endswith(".index.bf16.json") or name.endswith(".index.fp16.json"):
        return _read_index(path, device)
    if name.endswith(TORCH_SUFFIXES):
        return _read_torch(path, device)
    raise WeightsError(
        f"{path}: unknown weights format (expected .safetensors, .safetensors.index.json, or {'/'.join(TORCH_SUFFIXES)})"
    )


@functools.lru_cache(maxsize=256)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks; memoised in memory per (path, size, mtime)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise WeightsError(f"cannot hash {path}: not a file")
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)
