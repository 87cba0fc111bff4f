"""add_text_embeddings: CLIP text embeddings of every caption of a complete store (resumable).

Adds to each sample group ``clip_text`` (N, 77, C) and ``clip_text_pooled`` (N, 1, P), float16
(overflow-checked), plus ``text_status`` (N,) uint8 written after each chunk of embeddings, so
a killed run resumes where it stopped. Rows that were skipped get zeros and status 2.
"""
from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import torch

from cascadekit.codec.errors import InputError
from cascadekit.datasets import store as S
from cascadekit.datasets.writer import check_fp16


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


@torch.no_grad()
def add_text_embeddings(store, text_encoder, *, batch_size: int = 64, overwrite: bool = False,
                        progress: bool = True) -> dict:
    """Embed every caption of ``store`` with ``text_encoder`` (``encode(list[str]) -> ((B,L,C), (B,1,P))``).

    Returns ``{"embedded": n_this_run, "rows": total_rows}``. Raises :class:`InputError` if the
    store is incomplete, or already holds embeddings from another text encoder (unless ``overwrite``).
    """
    from tqdm.auto import tqdm

    warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
    import zarr

    root = S.open_store(store)
    if not root.attrs.get("complete", False):
        raise InputError(f"{store} is not complete; finish `cascadekit encode` (rerun it to resume) before adding text embeddings")
    ident = text_encoder_identity(text_encoder)
    w = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    old = w.attrs.get("text_encoder")
    if old is not None and old != ident and not overwrite:
        raise InputError(f"{store} already has text embeddings from another text encoder ({old.get('source')}); "
                         "pass --overwrite to replace them")
    probe_h, probe_p = text_encoder.encode([""])
    L, C = probe_h.shape[1:]
    P = probe_p.shape[-1]
    chunk_rows = int(w.attrs["chunk_rows"])
    tc = _text_chunk_rows(chunk_rows, L * C * 2)
    comp = S._zstd()
    embedded = total = 0
    for gp in S.group_paths(w):
        g = S.sample_group(w, gp)
        n = g["status"].shape[0]
        total += n
        fresh = (old != ident) or "text_status" not in g or g["clip_text"].shape[1:] != (L, C)
        if fresh:
            for name in ("clip_text", "clip_text_pooled", "text_status"):
                if name in g:
                    del g[name]
            g.create_array("clip_text", shape=(n, L, C), chunks=(tc, L, C), dtype="float16", compressors=comp,
                           fill_value=0, dimension_names=("sample", "token", "channel"))
            g.create_array("clip_text_pooled", shape=(n, 1, P), chunks=(tc, 1, P), dtype="float16",
                           compressors=comp, fill_value=0, dimension_names=("sample", "one", "channel"))
            g.create_array("text_status", shape=(n,), chunks=(tc,), dtype="uint8", compressors=comp,
                           fill_value=S.STATUS_PENDING, dimension_names=("sample",))
        w.attrs["text_encoder"] = ident
        tstat = np.asarray(g["text_status"][:])  # 1 byte per row; captions are read chunk by chunk below
        todo = [c for c in range(0, n, tc) if (tstat[c:c + tc] == S.STATUS_PENDING).any()]
        bar = tqdm(total=len(todo) * tc, unit="caption", disable=not progress, desc="embed-text")
        for a in todo:
            b = min(a + tc, n)
            hid = np.zeros((b - a, L, C), np.float16)
            pool = np.zeros((b - a, 1, P), np.float16)
            status = S.read_status(g, a, b)
            caps = np.asarray(g["captions"][a:b])
            ok = np.flatnonzero(status == S.STATUS_OK)
            for s in range(0, len(ok), batch_size):
                idx = ok[s:s + batch_size]
                texts = [str(c) for c in caps[idx]]
                h, p = text_encoder.encode(texts)
                h, p = h.float().cpu().numpy(), p.float().cpu().numpy().reshape(len(idx), 1, P)
                check_fp16(h, "clip_text", texts)
                check_fp16(p, "clip_text_pooled", texts)
                hid[idx], pool[idx] = h, p
            g["clip_text"][a:b] = hid
            g["clip_text_pooled"][a:b] = pool
            g["text_status"][a:b] = np.where(status == S.STATUS_OK, S.STATUS_OK, S.STATUS_SKIPPED).astype(np.uint8)
            embedded += len(ok)
            bar.update(b - a)
        bar.close()
    S.consolidate(store)
    return {"embedded": embedded, "rows": total, "text_encoder": json.loads(json.dumps(ident))}
