"""add_controls: ControlNet controls for a finished store, without re-encoding its latents (resumable, self-repairing).

The crops are read again from the stored ``source`` files and prepared exactly as ``encode`` prepared them (the
store's ``preprocess`` settings), so the controls equal those ``encode --controls`` writes. Chunk by chunk: the
control arrays first, their ``<array>_status`` last; a rerun does only the chunks still pending, or whose control
chunks went missing / fail their checksum. Rows skipped by ``encode`` get status 2; an ok row whose source cannot be
read again gets status 2 too and is counted by reason in the result (training then leaves it out).
The store's advisory lock is held while writing.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import numpy as np
from tqdm.auto import tqdm

from cascadekit.codec.errors import InputError
from cascadekit.datasets import integrity
from cascadekit.datasets import store as S
from cascadekit.datasets.access import LatentStore
from cascadekit.datasets.buckets import group_hw
from cascadekit.datasets.controls import ControlMaker, create_control_arrays, is_file_source, load_crops, \
    parse_controls, preprocess_of
from cascadekit.datasets.remote import store_lock, store_path


def _check(view: LatentStore, arrays: list[str]) -> None:
    """Before any work: something to add, the store is complete and its sources can be read again."""
    if not arrays:
        raise InputError("give the controls to add, e.g. --controls canny (canny, sr, inpaint), and/or "
                         "--effnet-scales 0.5,0.75,1.0")
    if not view.attrs.get("complete", False):
        raise InputError(f"{view.path} is not complete; finish `cascadekit encode` (rerun it to resume) first")
    for gv in view.groups:
        sel = gv.select(["latents"], check_chunks=False)
        if len(sel.rows):
            src = str(gv.cache("source", keep=0).rows(sel.rows[:1])[0])
            if not is_file_source(src):
                raise InputError(f"{view.path}: source {src!r} is not a file that can be read again (tar members and "
                                 "in-memory images are read only by encode): encode the original inputs with "
                                 "`cascadekit encode ... --controls` instead")


def _todo(g, arrays: list[str], chunk: int) -> list[int]:
    """First rows of the status chunks where a control is pending or its chunk behind an ok row is damaged."""
    n, todo = int(g["status"].shape[0]), []
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        for arr in arrays:
            st = S.read_status(g, a, b, S.status_of(arr))
            if (st == S.STATUS_PENDING).any() or S.damaged_rows(g, a, b, st == S.STATUS_OK, [arr], deep=True):
                todo.append(a)
                break
    return todo


def _do_chunk(gv, g, a: int, b: int, maker: ControlMaker, cfg, arrays: list[str], reasons: Counter) -> int:
    """Compute and write the controls of rows ``a..b-1`` (data first, statuses last). Returns rows done."""
    status = gv.status(a, b)
    ok = np.flatnonzero(status == S.STATUS_OK)
    sources = [str(s) for s in gv.cache("source", keep=0).rows(ok + a)] if len(ok) else []
    crops, why = load_crops(sources, cfg)
    good = ok[[r == "" for r in why]] if len(ok) else ok
    reasons.update(r for r in why if r)
    values = maker.compute(crops) if len(good) else {}
    new_status = np.full(b - a, S.STATUS_SKIPPED, np.uint8)
    new_status[good] = S.STATUS_OK
    for arr in arrays:
        block = np.zeros((b - a, *g[arr].shape[1:]), g[arr].dtype)
        if len(good):
            block[good] = values[arr].astype(block.dtype)
        S.writable(g[arr])[a:b] = block
    for arr in arrays:
        S.writable(g[S.status_of(arr)])[a:b] = new_status  # last: marks the chunk's control done
    return len(good)


def add_controls(store, controls: str | Iterable[str], encoder: Any = None, *,
                 effnet_scales: str | Iterable[float] = (), progress: bool = True) -> dict:
    """Add ``controls`` (``canny``, ``sr``, ``inpaint``; :mod:`.controls`) and/or the ``effnet_scales`` array of
    the downscale factors ``effnet_scales`` (:mod:`.effnet_scales`) to every sample group of a complete store.
    Scales stored with other factors are replaced.

    encoder: the EfficientNet encoder (a ``Codec``) for ``sr`` and the scales. Returns ``{"rows_done": n this
    run, "chunks": k, "skipped": {reason: count}, "controls": [...arrays' kinds]}``. Raises :class:`InputError`
    before any work for an unknown control, a bad factor, an incomplete store, sources that cannot be read
    again, or another process holding the store.
    """
    controls = parse_controls(controls)
    view = LatentStore(store)
    maker = ControlMaker(controls, encoder, str(view.attrs.get("dtype", "float16")), effnet_scales)
    _check(view, maker.arrays)
    cfg = preprocess_of(view.attrs)
    chunk = int(view.attrs["chunk_rows"])
    done, chunks, reasons = 0, 0, Counter()
    all_specs = [maker.specs(group_hw(gv.path, cfg)) for gv in view.groups]  # bad scales fail before any write
    with store_lock(store_path(store)):
        w = S.open_store(store, mode="r+")
        plans = []
        for gv, specs in zip(view.groups, all_specs):
            g = S.sample_group(w, gv.path)
            create_control_arrays(g, specs, chunk)
            plans.append((gv, g, [sp.array for sp in specs]))
        plans = [(gv, g, arrays, _todo(g, arrays, chunk)) for gv, g, arrays in plans]
        total = sum(min(a + chunk, gv.n) - a for gv, _, _, todo in plans for a in todo)
        with tqdm(total=total, unit="img", disable=not progress, desc="add-controls") as bar:
            for gv, g, arrays, todo in plans:
                for a in todo:
                    b = min(a + chunk, gv.n)
                    done += _do_chunk(gv, g, a, b, maker, cfg, arrays, reasons)
                    chunks += 1
                    bar.update(b - a)
        S.consolidate(store)
    return {"rows_done": done, "chunks": chunks, "skipped": dict(reasons),
            "controls": list(controls) + (["effnet_scales"] if maker.scales else [])}


__all__ = ["add_controls"]
