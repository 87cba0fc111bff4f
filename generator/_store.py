"""Random access to a cascadekit Zarr latent store for training (layout: docs/dataset_format.md).

Only rows with ``status == ok`` are used; group sample ``i`` is the i-th ok row. Per-sample arrays
read: ``latents`` (n,16,h,w), ``captions`` (n,) and, when present, text/image embeddings
(``clip_text`` (n,77,C), ``clip_text_pooled`` (n,1,P), ``clip_img`` (n,1,I)). Empty-caption
embeddings stored at the root (``empty_clip_text`` / ``empty_clip_text_pooled``) are used for caption
dropout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cascadekit.codec.errors import InputError
from cascadekit.generator.batches import Group
from cascadekit.generator.conditioning import EmptyCaption

EMBEDDINGS = ("clip_text", "clip_text_pooled", "clip_img")
EMPTY_NAMES = (("empty_clip_text", "empty_clip_text_pooled"),)


def _find(container, names) -> Any:
    for n in names:
        try:
            if n in container:
                return container[n]
        except Exception:  # noqa: BLE001 - zarr membership on odd keys
            continue
    return None


def open_groups(path: Path):
    """(groups with their readers, available fields, empty-caption embeddings or None, {field: per-sample shape})."""
    from cascadekit.datasets.store import STATUS_OK, group_paths, open_store, read_status, sample_group

    root = open_store(path)
    out = []
    fields_per_group = []
    field_shapes: dict[str, tuple] = {}
    for gp in group_paths(root):
        g = sample_group(root, gp)
        rows = np.flatnonzero(read_status(g) == STATUS_OK)
        if len(rows) == 0:
            continue
        lat = g["latents"]
        fields = {"latents"}
        caps = None
        if "captions" in g:
            caps_all = np.asarray(g["captions"][:])[rows]
            if any(str(c).strip() for c in caps_all):
                caps = [str(c) for c in caps_all]
                fields.add("captions")
        emb = {}
        for name in EMBEDDINGS:
            if name in g:
                emb[name] = g[name]
                fields.add(name)
                field_shapes[name] = tuple(g[name].shape[1:])
        if "clip_text" in emb and "text_status" in g:
            tstat = np.asarray(g["text_status"][:])[rows]
            if (tstat != STATUS_OK).any():
                raise InputError(f"{path}: {int((tstat != STATUS_OK).sum())} samples of group {gp or 'root'!r} have "
                                 "no text embedding yet; rerun `cascadekit embed-text` to finish it")
        fields_per_group.append(fields)
        name = gp or "root"
        grp = Group(name, int(len(rows)), tuple(int(s) for s in lat.shape[1:]), chunk=int(lat.chunks[0]))
        out.append((grp, _reader(lat, rows, caps, emb)))
    if not out:
        raise InputError(f"latent store {path} has no complete samples (status ok); did `cascadekit encode` finish?")
    fields = set.intersection(*fields_per_group)
    empty = None
    for tn, pn in EMPTY_NAMES:
        t, p = _find(root, [tn]), _find(root, [pn])
        if t is not None and p is not None:
            t = torch.from_numpy(np.asarray(t[:], dtype=np.float32))
            p = torch.from_numpy(np.asarray(p[:], dtype=np.float32))
            empty = EmptyCaption(t.reshape(1, *t.shape[-2:]), p.reshape(1, 1, -1))
    if empty is None and "clip_text" in fields:
        empty = _empty_from_text_encoder(root.attrs.get("text_encoder"), field_shapes)
    return out, fields, empty, field_shapes


def _empty_from_text_encoder(ident, field_shapes) -> EmptyCaption | None:
    """Empty-caption embeddings of the text encoder that embedded the store (its cache or its folder)."""
    if not isinstance(ident, dict) or not ident.get("source") or ident["source"] == "None":
        return None
    from cascadekit.codec.errors import CascadeKitError
    from cascadekit.codec.text import empty_caption_embeddings

    src = Path(ident["source"])
    for weights_dir in (src.parent, src):
        if not weights_dir.is_dir():
            continue
        try:
            t, p = empty_caption_embeddings(weights_dir)
        except (CascadeKitError, OSError, ValueError):
            continue
        if t.shape[-1] == field_shapes.get("clip_text", (t.shape[-1],))[-1]:
            return EmptyCaption(t.float().cpu(), p.float().cpu().reshape(1, 1, -1))
    return None


class _ChunkCache:
    """Decoded row chunks of one array, least recently used dropped first (all of them for small arrays)."""

    def __init__(self, arr, keep: int):
        self.arr, self.keep = arr, keep
        self.rows_per_chunk = int(arr.chunks[0])
        self.chunks: dict[int, np.ndarray] = {}

    def rows(self, rows: np.ndarray) -> np.ndarray:
        out = None
        c = self.rows_per_chunk
        for ci in np.unique(rows // c):
            block = self.chunks.pop(int(ci), None)
            if block is None:
                block = np.asarray(self.arr[int(ci) * c:(int(ci) + 1) * c])
            self.chunks[int(ci)] = block  # most recently used last
            sel = np.flatnonzero(rows // c == ci)
            if out is None:
                out = np.empty((len(rows), *block.shape[1:]), dtype=block.dtype)
            out[sel] = block[rows[sel] - int(ci) * c]
        while len(self.chunks) > self.keep:
            self.chunks.pop(next(iter(self.chunks)))
        return out


SMALL_BYTES = 256 << 20  # arrays up to this size are kept decoded in memory entirely


def _cache_for(arr) -> _ChunkCache:
    n_chunks = -(-arr.shape[0] // int(arr.chunks[0]))
    nbytes = int(np.prod(arr.shape)) * arr.dtype.itemsize
    return _ChunkCache(arr, n_chunks if nbytes <= SMALL_BYTES else 16)


def _reader(lat, rows: np.ndarray, caps: list[str] | None, emb: dict):
    caches = {"latents": _cache_for(lat)}
    caches.update({name: _cache_for(arr) for name, arr in emb.items()})

    def read(indices: list[int]) -> dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64)
        sel = rows[idx]  # store rows of the requested samples, in the requested order
        batch: dict[str, Any] = {"latents": torch.from_numpy(caches["latents"].rows(sel).astype(np.float32))}
        if caps is not None:
            batch["captions"] = [caps[i] for i in idx.tolist()]
        for name in emb:
            batch[name] = torch.from_numpy(caches[name].rows(sel).astype(np.float32))
        return batch

    return read
