"""verify_store: every chunk behind the rows a store calls done, checked (``cascadekit inspect --verify``).

For each sample group: the chunks of every per-row array holding an ok row (``status == 1``; for text
embeddings ``text_status == 1``) must pass their crc32c checksum (version-1 stores have none: their chunks
are decoded instead) and must exist, decided per format version (:func:`every_chunk_written`): a version-2
store is written with ``write_empty_chunks``, so a missing chunk of any per-row array is lost data; version 1
did not write chunks holding only fill values ('' captions, zero sizes), so there only the data arrays
(:data:`~.store.DATA_ARRAYS`, never all fill values in practice) must exist. The ``status``/``text_status``
chunks themselves must decode, and in a complete store exist. Reads the whole store once, block by block
(constant memory).
"""
from __future__ import annotations

import numpy as np

from cascadekit.datasets import integrity
from cascadekit.datasets import store as S
from cascadekit.datasets.access import LatentStore
from cascadekit.datasets.remote import store_path


def verify_store(store, block_rows: int = 1 << 16) -> dict:
    """Check ``store``. Returns ``{"store", "ok" (no problem found), "chunks_checked", "problems": [{"group",
    "array", "chunk", "rows": [start, stop), "kind": "missing" | "damaged", "detail"}], "rows_affected":
    {group: ok rows behind a problem}}``."""
    st = LatentStore(store)
    complete = bool(st.attrs.get("complete", False))
    problems, affected, checked = [], {}, 0
    for gv in st.groups:
        n_bad, n_checked, probs = _verify_group(gv.g, complete, block_rows, every_chunk_written(st.version))
        problems += probs
        checked += n_checked
        if n_bad:
            affected[gv.path or "/"] = n_bad
    return {"store": str(store_path(store)), "ok": not problems, "chunks_checked": checked,
            "problems": [_as_dict(p) for p in problems], "rows_affected": affected}


def every_chunk_written(version: int) -> bool:
    """Whether a store of format ``version`` has a chunk file behind every written row of every per-row array
    (version >= 2: ``write_empty_chunks``); version 1 skipped chunks that held only fill values."""
    return version >= 2


def _row_problems(g, a: int, b: int, ok: np.ndarray, arrays, every_chunk: bool) -> list[integrity.ChunkProblem]:
    """Deep-checked problems of the chunks of ``arrays`` behind the ok rows of ``a..b-1``; a missing chunk counts
    for every array when ``every_chunk``, else only for the data arrays (:func:`~.store.damaged_rows`)."""
    if not every_chunk:
        return S.damaged_rows(g, a, b, ok, arrays, deep=True)
    rows = np.flatnonzero(ok) + a
    if not len(rows):
        return []
    return [p for name in arrays
            for p in integrity.bad_chunks(g[name], integrity.chunks_of_rows(g[name], rows), True, g.path, name)]


def _verify_group(g, complete: bool, block_rows: int, every_chunk: bool):
    """(ok rows behind a problem, chunks checked, problems) of one sample group."""
    plans = [("status", S.checked_arrays(g, "status"))]
    for status_name in ("text_status", *(S.status_of(c) for c in S.CONTROL_ARRAYS)):
        if status_name in g:
            plans.append((status_name, S.checked_arrays(g, status_name)))
    problems: list[integrity.ChunkProblem] = []
    checked = bad_rows = 0
    for status_name, arrays in plans:
        sarr = g[status_name]
        n, c = int(sarr.shape[0]), int(sarr.chunks[0])
        step = max(c, block_rows // c * c)
        for a in range(0, n, step):
            b = min(a + step, n)
            # a status chunk not yet written is pending work, not damage, unless encode says it finished
            own = _status_chunk_problems(sarr, g.path, range(a // c, -(-b // c)), complete and status_name == "status")
            ok = S.read_status(g, a, b, status_name) == S.STATUS_OK
            found = _row_problems(g, a, b, ok, arrays, every_chunk)
            checked += len(range(a // c, -(-b // c))) + sum(
                len(integrity.chunks_of_rows(g[x], np.flatnonzero(ok) + a)) for x in arrays)
            bad_rows += int((integrity.rows_mask(found, a, b) & ok).sum())
            problems += own + found
    return bad_rows, checked, _unique(problems)


def _status_chunk_problems(arr, group: str, chunks, must_exist: bool) -> list[integrity.ChunkProblem]:
    name = arr.path.rsplit("/", 1)[-1]
    out = []
    for p in integrity.bad_chunks(arr, chunks, deep=True, group=group, name=name):
        if p.kind == integrity.MISSING and not must_exist:
            continue  # not written yet: those rows are simply pending
        detail = p.detail + ("; its rows read as pending" if p.kind == integrity.MISSING else "")
        out.append(integrity.ChunkProblem(p.group, p.array, p.chunk, p.rows, p.kind, detail))
    return out


def _unique(problems):
    seen, out = set(), []
    for p in problems:
        k = (p.group, p.array, p.chunk)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out


def _as_dict(p: integrity.ChunkProblem) -> dict:
    return {"group": p.group or "/", "array": p.array, "chunk": p.chunk, "rows": list(p.rows), "kind": p.kind,
            "detail": p.detail}


def verify_error(r: dict) -> str:
    """The one-line summary of a failed :func:`verify_store` report: how many chunks, which rows, the remedy."""
    kinds = [p["kind"] for p in r["problems"]]
    what = ", ".join(f"{kinds.count(k)} {k}" for k in (integrity.MISSING, integrity.DAMAGED) if k in kinds)
    rows = sum(r["rows_affected"].values())
    text = any(p["array"] in S.TEXT_ARRAYS or p["array"] == "text_status" for p in r["problems"])
    other = any(not (p["array"] in S.TEXT_ARRAYS or p["array"] == "text_status") for p in r["problems"])
    remedy = " and ".join((["rerun `cascadekit encode` with the same arguments"] if other else [])
                          + (["rerun `cascadekit embed-text`"] if text else []))
    return (f"{r['store']}: {len(kinds)} chunk(s) behind rows marked done are missing or damaged ({what}; "
            f"{rows} ok rows affected); {remedy} to re-create them")


def format_verify(r: dict, limit: int = 50) -> str:
    """Readable lines of a :func:`verify_store` report: one per problem (array, chunk, rows)."""
    if r["ok"]:
        return f"verify     ok: {r['chunks_checked']} chunks checked, none missing or damaged"
    lines = [f"verify     {len(r['problems'])} missing or damaged chunk(s) behind rows marked done "
             f"({r['chunks_checked']} checked):"]
    for p in r["problems"][:limit]:
        where = p["array"] if p["group"] == "/" else f"{p['group']}/{p['array']}"
        lines.append(f"  {p['kind']:<8} {where} chunk {p['chunk']} rows {p['rows'][0]}..{p['rows'][1] - 1}: {p['detail']}")
    if len(r["problems"]) > limit:
        lines.append(f"  ... and {len(r['problems']) - limit} more (--json lists all)")
    for gp, k in r["rows_affected"].items():
        lines.append(f"  group {gp}: {k} ok rows affected")
    lines.append("  repair: rerun `cascadekit encode` with the same arguments (latents, captions, ...) and "
                 "`cascadekit embed-text` (text embeddings): they re-create these chunks")
    return "\n".join(lines)
