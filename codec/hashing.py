"""Weight identities: SHA-256 of a checkpoint file (shards combined) or of an in-memory state dict."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from cascadekit.codec.weights.io import sha256_file
from cascadekit.codec.weights.load import diffusers_weights_file


def state_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (sorted keys, shapes, dtypes, bytes): the identity of in-memory weights."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a weights file; for a diffusers folder, of its weights file (and shards, combined)."""
    path = Path(path)
    if path.is_dir():
        path = diffusers_weights_file(path)
    if path.name.endswith(".json"):  # sharded index: hash of the index and every shard, in order
        shards = sorted(set(json.loads(path.read_text()).get("weight_map", {}).values()))
        h = hashlib.sha256(sha256_file(path).encode())
        for s in shards:
            h.update(sha256_file(path.parent / s).encode())
        return h.hexdigest()
    return sha256_file(path)


__all__ = ["file_sha256", "state_sha256"]
