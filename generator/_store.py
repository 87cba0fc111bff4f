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
from cascadekit.datasets.access import LatentStore
from cascadekit.generator.batches import Group
from cascadekit.generator.conditioning import EmptyCaption

EMBEDDINGS = ("clip_text", "clip_text_pooled", "clip_img")
EMPTY_NAMES = (("empty_clip_text", "empty_clip_text_pooled"),)


def open_groups(path: Path, extra: tuple[str, ...] = ()):
    """(groups with their readers, available fields, empty-caption embeddings or None, {field: per-sample shape}).

    ``extra``: further fields (:data:`cascadekit.datasets.access.FIELDS`, e.g. a ControlNet control or
    ``source``) read with each batch where a group has them; rows are then those usable for them too.

    Rows are selected by :meth:`cascadekit.datasets.access.GroupView.select` (the one rule); training refuses
    a store whose ok rows lack text embeddings or chunk files instead of training on fewer or zero samples.
    """
    store = LatentStore(path)
    out = []
    fields_per_group = []
    field_shapes: dict[str, tuple] = {}
    for gv in store.groups:
        emb_names = [n for n in EMBEDDINGS if gv.has(n)] + [n for n in extra if gv.has(n)]
        sel = gv.select(["latents", *emb_names] + (["captions"] if gv.has("captions") else []))
        _refuse_incomplete(path, gv, sel)
        rows = sel.rows
        if len(rows) == 0:
            continue
        fields = {"latents"}
        caps = None
        if gv.has("captions"):
            caps_all = gv.cache("captions", keep=0).rows(rows)
            if any(str(c).strip() for c in caps_all):
                caps = [str(c) for c in caps_all]
                fields.add("captions")
        for name in emb_names:
            fields.add(name)
            field_shapes[name] = gv.shape(name)
        fields_per_group.append(fields)
        lat = gv.array("latents")
        grp = Group(gv.name, int(len(rows)), gv.shape("latents"), chunk=int(lat.chunks[0]))
        out.append((grp, _GroupReader(gv, rows, caps, emb_names)))
    if not out:
        raise InputError(f"latent store {path} has no complete samples (status ok); did `cascadekit encode` finish?")
    fields = set.intersection(*fields_per_group)
    empty = None
    for tn, pn in EMPTY_NAMES:
        t, p = store.root_array(tn), store.root_array(pn)
        if t is not None and p is not None:
            t = torch.from_numpy(np.asarray(t[:], dtype=np.float32))
            p = torch.from_numpy(np.asarray(p[:], dtype=np.float32))
            empty = EmptyCaption(t.reshape(1, *t.shape[-2:]), p.reshape(1, 1, -1))
    if empty is None and "clip_text" in fields:
        empty = _empty_from_text_encoder(store.attrs.get("text_encoder"), field_shapes)
    return out, fields, empty, field_shapes


def _refuse_incomplete(path, gv, sel) -> None:
    sel.require_complete(str(path), gv.path or 'root')


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


class ChunkedGroupReader:
    """Batches of one group's store ``rows`` read through its chunk ``caches`` (field -> ChunkCache):
    ``read(indices)``, or in two stages for a read-ahead (``generator/training/prefetch.py``): :meth:`fetch`
    decodes the chunks a batch needs (the costly, GIL-bound part: zstd holds the GIL) and returns them,
    :meth:`assemble` gathers the batch from them. ``assemble(i, fetch(i)) == read(i)``, bit for bit.
    Subclasses set ``rows`` and ``caches`` and write :meth:`assemble`."""

    rows: np.ndarray
    caches: dict[str, Any]

    def read(self, indices: list[int]) -> dict[str, Any]:
        return self.assemble(indices, {})

    def fetch(self, indices: list[int]) -> dict[str, dict[int, np.ndarray]]:
        """The decoded chunks ``indices`` need (see :func:`fetch_chunks`)."""
        return fetch_chunks(self.caches, self.rows[np.asarray(indices, dtype=np.int64)])

    def assemble(self, indices: list[int], fetched: dict[str, dict[int, np.ndarray]]) -> dict[str, Any]:
        raise NotImplementedError


class _GroupReader(ChunkedGroupReader):
    """The Stage C trainer's batches of one group: latents, captions, stored embeddings and controls."""

    def __init__(self, gv, rows: np.ndarray, caps: list[str] | None, emb: list[str]):
        self.rows, self.caps, self.emb = rows, caps, emb
        self.caches = {name: gv.cache(name) for name in ["latents", *emb]}

    def assemble(self, indices: list[int], fetched: dict[str, dict[int, np.ndarray]]) -> dict[str, Any]:
        """The batch of ``indices`` (see :meth:`StoreData.read`), from the chunks ``fetched`` holds and the caches."""
        idx = np.asarray(indices, dtype=np.int64)
        sel = self.rows[idx]  # store rows of the requested samples, in the requested order
        caches = self.caches
        batch: dict[str, Any] = {"latents": float32_tensor(caches["latents"].rows(sel, fetched.get("latents")))}
        if self.caps is not None:
            batch["captions"] = [self.caps[i] for i in idx.tolist()]
        for name in self.emb:
            values = caches[name].rows(sel, fetched.get(name))
            if values.dtype.kind in "OUT":  # a string field (e.g. source)
                batch[name] = [str(v) for v in values]
            elif values.dtype == np.uint8:  # uint8 controls stay uint8 (4x less memory per batch)
                batch[name] = torch.from_numpy(values)
            else:
                batch[name] = float32_tensor(values)
        return batch


def fetch_chunks(caches: dict[str, Any], rows: np.ndarray) -> dict[str, dict[int, np.ndarray]]:
    """{field: {chunk index: decoded chunk}} of the chunks store ``rows`` need, read through ``caches`` (field ->
    :class:`~cascadekit.datasets.access.ChunkCache`), for the fields whose chunks of one batch fit in their cache
    (``keep``); a more finely chunked field is left to the gather, so a batch in flight holds at most ``keep``
    decoded chunks per field (what the cache itself may hold). The read-ahead's first stage."""
    out = {}
    for name, cache in caches.items():
        ids = np.unique(rows // cache.rows_per_chunk).tolist()
        if len(ids) <= cache.keep:
            out[name] = {ci: cache.chunk(ci) for ci in ids}
    return out


def float32_tensor(values: np.ndarray) -> torch.Tensor:
    """``values`` (a fresh array) as a float32 tensor: torch's vectorised conversion (about 2.4x numpy's astype)
    into a numpy-allocated buffer (numpy reuses freed large buffers; a fresh torch tensor of a batch page-faults,
    measured ~10 % more CPU per sample on a read-ahead thread)."""
    if values.dtype == np.float32:
        return torch.from_numpy(values)
    out = np.empty(values.shape, np.float32)
    torch.from_numpy(out).copy_(torch.from_numpy(values))
    return torch.from_numpy(out)
