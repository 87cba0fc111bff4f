"""add_text_embeddings: CLIP text embeddings of every caption of a complete store (resumable, self-repairing).

Adds to each sample group ``clip_text`` (N, 77, C) and ``clip_text_pooled`` (N, 1, P), float16
(overflow-checked), plus ``text_status`` (N,) uint8 written after each chunk of embeddings, so
a killed run resumes where it stopped. Rows that were skipped get zeros and status 2. A rerun also
re-creates embedding chunks that were deleted or damaged (deep check, :mod:`.integrity`). The store's
advisory lock is held while embedding: a second process is refused with the holder named.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cascadekit.codec.errors import InputError
from cascadekit.datasets import integrity
from cascadekit.datasets import store as S
from cascadekit.datasets.access import LatentStore
from cascadekit.datasets.remote import store_lock, store_path
from cascadekit.datasets.writer import check_fp16

TEXT_ARRAYS = ("clip_text", "clip_text_pooled")


@dataclass(frozen=True)
class TextLayout:
    """Embedding shapes: hidden (L, C), pooled (1, P); ``chunk`` rows per text chunk."""

    L: int
    C: int
    P: int
    chunk: int


def _text_chunk_rows(chunk_rows: int, per_row_bytes: int) -> int:
    best = 1
    for d in range(1, chunk_rows + 1):
        if chunk_rows % d == 0 and d * per_row_bytes <= 8 << 20:
            best = d
    return best


def text_encoder_identity(text_encoder) -> dict:
    """Name + a hash of the text tower's weights (what the embeddings depend on)."""
    model = getattr(text_encoder, "model", None)
    h = hashlib.sha256()
    if model is not None:
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
    return {"source": str(getattr(text_encoder, "source", None)), "sha256_of_state_dict": h.hexdigest(),
            "max_length": int(getattr(text_encoder, "max_length", 77))}


def check_embeddable(store) -> None:
    """Fail early (before a text encoder is loaded): ``store`` must be a complete store that no other process
    holds. Raises :class:`InputError` / :class:`~cascadekit.codec.fsio.LockedError`."""
    st = LatentStore(store)
    if not st.attrs.get("complete", False):
        raise InputError(f"{store} is not complete; finish `cascadekit encode` (rerun it to resume) before adding "
                         "text embeddings")
    store_lock(store_path(store)).acquire().release()  # object stores: no lock, a warning (datasets/remote.py)


@torch.no_grad()
def add_text_embeddings(store, text_encoder, *, batch_size: int = 64, overwrite: bool = False,
                        progress: bool = True) -> dict:
    """Embed every caption of ``store`` with ``text_encoder`` (``encode(list[str]) -> ((B,L,C), (B,1,P))``).

    ``batch_size`` (>= 1) captions per encoder call; a batch never crosses a text chunk, so values above
    the text chunk's rows act as that many (``batch_size_used`` in the result).

    Returns ``{"embedded": n_this_run, "empty": empty captions among them, "rows": total_rows,
    "batch_size_used": ..., "text_encoder": identity}``. Raises :class:`InputError` if the store is
    incomplete, held by another process, or already holds embeddings from another text encoder (unless
    ``overwrite``).
    """
    if int(batch_size) < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    with store_lock(store_path(store)):
        return _embed_store(store, text_encoder, int(batch_size), overwrite, progress)


def _embed_store(store, text_encoder, batch_size: int, overwrite: bool, progress: bool) -> dict:
    warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
    view = LatentStore(store)  # read-only view: groups, status, captions
    if not view.attrs.get("complete", False):
        raise InputError(f"{store} is not complete; finish `cascadekit encode` (rerun it to resume) before adding "
                         "text embeddings")
    ident = text_encoder_identity(text_encoder)
    w = S.open_store(store, mode="r+")
    old = w.attrs.get("text_encoder")
    if old is not None and old != ident and not overwrite:
        raise InputError(f"{store} already has text embeddings from another text encoder ({old.get('source')}); "
                         "pass --overwrite to replace them")
    probe_h, probe_p = text_encoder.encode([""])
    L, C = probe_h.shape[1:]
    lay = TextLayout(int(L), int(C), int(probe_p.shape[-1]), _text_chunk_rows(int(w.attrs["chunk_rows"]), L * C * 2))
    version = int(w.attrs.get("format_version", S.FORMAT_VERSION))
    plans = []
    for gv in view.groups:
        g = S.sample_group(w, gv.path)
        if (old != ident) or "text_status" not in g or g["clip_text"].shape[1:] != (lay.L, lay.C):
            _create_text_arrays(g, gv.n, lay, version)
        plans.append((gv, g, _todo_chunks(g, gv.n, lay.chunk)))
    w.attrs["text_encoder"] = ident
    total = sum(min(a + lay.chunk, gv.n) - a for gv, _, todo in plans for a in todo)
    embedded = empty = 0
    with tqdm(total=total, unit="caption", disable=not progress, desc="embed-text") as bar:
        for gv, g, todo in plans:
            for a in todo:
                n_ok, n_empty = _embed_chunk(gv, g, a, min(a + lay.chunk, gv.n), lay, text_encoder, batch_size, bar)
                embedded, empty = embedded + n_ok, empty + n_empty
    S.consolidate(store)
    return {"embedded": embedded, "empty": empty, "rows": sum(gv.n for gv, _, _ in plans),
            "batch_size_used": min(batch_size, lay.chunk), "text_encoder": json.loads(json.dumps(ident))}


def _create_text_arrays(g, n: int, lay: TextLayout, version: int) -> None:
    for name in ("clip_text", "clip_text_pooled", "text_status"):
        if name in g:
            del g[name]
    S.create_row_array(g, "clip_text", (n, lay.L, lay.C), (lay.chunk, lay.L, lay.C), "float16", 0, version)
    S.create_row_array(g, "clip_text_pooled", (n, 1, lay.P), (lay.chunk, 1, lay.P), "float16", 0, version)
    S.create_row_array(g, "text_status", (n,), (lay.chunk,), "uint8", S.STATUS_PENDING, version)


def _todo_chunks(g, n: int, tc: int, block_chunks: int = 64) -> list[int]:
    """First rows of the text chunks to (re)compute: any row pending, or an embedded row whose embedding
    chunk is missing or damaged (deep check: a rerun repairs them)."""
    todo = []
    for a in range(0, n, tc * block_chunks):
        b = min(a + tc * block_chunks, n)
        st = S.read_status(g, a, b, "text_status")  # an undecodable status chunk reads as pending
        bad = S.damaged_rows(g, a, b, st == S.STATUS_OK, TEXT_ARRAYS, deep=True)
        redo = (st == S.STATUS_PENDING) | integrity.rows_mask(bad, a, b)
        todo += [c for c in range(a, b, tc) if redo[c - a:c - a + tc].any()]
    return todo


def _embed_chunk(gv, g, a: int, b: int, lay: TextLayout, text_encoder, batch_size: int, bar) -> tuple[int, int]:
    """Embed the ok rows of rows ``a..b-1`` (one text chunk), write it, text_status last.
    Returns (embedded, of which empty captions)."""
    hid = np.zeros((b - a, lay.L, lay.C), np.float16)
    pool = np.zeros((b - a, 1, lay.P), np.float16)
    status = gv.status(a, b)
    ok = np.flatnonzero(status == S.STATUS_OK)
    caps = gv.cache("captions", keep=0).rows(ok + a) if len(ok) else np.zeros(0, str)
    for s in range(0, len(ok), batch_size):
        idx = ok[s:s + batch_size]
        texts = [str(c) for c in caps[s:s + batch_size]]
        h, p = text_encoder.encode(texts)
        h, p = h.float().cpu().numpy(), p.float().cpu().numpy().reshape(len(idx), 1, lay.P)
        check_fp16(h, "clip_text", texts)
        check_fp16(p, "clip_text_pooled", texts)
        hid[idx], pool[idx] = h, p
        bar.update(len(idx))
    S.writable(g["clip_text"])[a:b] = hid
    S.writable(g["clip_text_pooled"])[a:b] = pool
    tstat = np.where(status == S.STATUS_OK, S.STATUS_OK, S.STATUS_SKIPPED).astype(np.uint8)
    S.writable(g["text_status"])[a:b] = tstat  # last: marks the chunk done
    bar.update(b - a - len(ok))
    return len(ok), int(sum(1 for c in caps if not str(c).strip()))
