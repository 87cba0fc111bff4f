"""Byte-reproducible safetensors files, and a cheap check that one is complete.

The ``safetensors`` library writes its ``__metadata__`` through a Rust hash map, so the order of the
metadata keys (and with it the file's bytes) changes from process to process. :func:`write_safetensors`
writes the same format itself in a fixed order: metadata keys sorted, tensors sorted by (element size
descending, name), each tensor 8-byte aligned, the header padded with spaces to a multiple of 8 (as the
reference writer does). Identical tensors and metadata give identical files, so content hashes,
caches and ``diff`` work. The result loads with ``safetensors.safe_open`` / ``load_file`` unchanged.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import IO

import torch

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
MAX_HEADER = 100_000_000  # the reference reader's limit


def _header(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> tuple[bytes, list[str]]:
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    head: dict[str, object] = {}
    if metadata:
        head["__metadata__"] = {str(k): str(metadata[k]) for k in sorted(metadata)}
    offset = 0
    for k in order:
        t = tensors[k]
        if t.dtype not in DTYPES:
            raise TypeError(f"tensor {k!r}: dtype {t.dtype} cannot be stored in safetensors")
        size = t.numel() * t.element_size()
        head[k] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(head, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return raw, order


def write_safetensors(f: IO[bytes], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (any device; copied to CPU one at a time) and string ``metadata`` to the binary
    file ``f`` in the fixed order of the module docstring."""
    raw, order = _header(tensors, metadata)
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for k in order:
        t = tensors[k].detach().to("cpu").contiguous()
        f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def safetensors_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (missing, truncated, bad header), or None if it is.

    Reads only the header and the file size: every tensor's bytes must lie inside the file and the data
    section must end exactly at the end of the file."""
    path = Path(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                return f"{path.name} is truncated ({size} bytes, no header)"
            n = struct.unpack("<Q", prefix)[0]
            if n > MAX_HEADER or 8 + n > size:
                return f"{path.name} is truncated or not a safetensors file (header of {n} bytes, file of {size})"
            head = json.loads(f.read(n))
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError) as e:
        return f"{path.name} cannot be read ({e})"
    if not isinstance(head, dict):
        return f"{path.name} has a malformed header"
    ends = [v["data_offsets"][1] for k, v in head.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        return f"{path.name} is truncated or damaged ({size} bytes, its header describes {expected})"
    return None
