"""inspect_store: what a latent store holds (counts, shapes, stats, errors) and a preview grid.

The report is a JSON-able dict. With ``write=True`` it is also saved inside the store as the
attributes of the ``inspect`` sub-group, next to ``inspect/preview.png`` (a grid of previewer
decodes of a few latents), so nothing is written outside the store.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cascadekit.codec.errors import CascadeKitError
from cascadekit.codec.images import save_grid
from cascadekit.datasets import store as S
from cascadekit.datasets.access import LatentStore
from cascadekit.datasets.inspect_controls import control_report, write_canny_preview
from cascadekit.datasets.remote import RemotePath, store_path, write_via_local


def _disk_bytes(path: Path) -> int:
    if isinstance(path, RemotePath):
        return path.size()
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


def _ok_rows_at(g, ordinals: np.ndarray) -> list[int]:
    """Row numbers of the ok rows number ``ordinals`` (0-based among ok rows, increasing)."""
    out, seen, j = [], 0, 0
    for start, st in S.iter_status(g):
        okrows = np.flatnonzero(st == S.STATUS_OK)
        while j < len(ordinals) and ordinals[j] < seen + len(okrows):
            out.append(start + int(okrows[ordinals[j] - seen]))
            j += 1
        seen += len(okrows)
    return out


def inspect_store(store, codec=None, *, n_preview: int = 16, write: bool = False, max_errors: int = 10,
                  preview_error: str | None = None) -> dict:
    """Report on ``store``; with ``codec`` (anything with ``preview(latents)``) also a preview grid.

    A previewer-only codec is enough (``Codec.from_pretrained(w, components=("previewer",))``).
    ``preview_error``: why there is no codec (e.g. the weights have no previewer), kept in the report.

    Returns a dict: format, complete, encoder, preprocess, and per group: rows, ok, skipped, pending,
    latent shape/dtype/chunks, stored bytes per sample, per-channel mean/std, skip reasons (with a
    few examples), missing captions, text-embedding presence. ``preview_png`` is set when written.
    """
    path = store_path(store)
    st = LatentStore(path)
    attrs = st.attrs
    report = {k: attrs.get(k) for k in ("format", "format_version", "tool_version", "created", "encoder",
                                         "preprocess", "spaces")}
    report.update({"store": str(path), "complete": bool(attrs.get("complete", False)), "groups": {}})
    preview_latents = []
    for gv in st.groups:
        info, sel = _group_info(gv, attrs, max_errors)
        report["groups"][gv.path or "/"] = info
        if info["ok"] and len(preview_latents) < n_preview:
            k = min(n_preview - len(preview_latents), info["ok"])
            rows = np.asarray(_ok_rows_at(gv.g, np.linspace(0, info["ok"] - 1, k).round().astype(np.int64)), np.int64)
            preview_latents += list(gv.cache("latents", keep=1).rows(rows[np.isin(rows, sel.rows)]))
    for key in ("rows", "ok", "skipped"):
        report[key] = sum(i[key] for i in report["groups"].values())
    report["store_bytes"] = _disk_bytes(path)
    report["preview_png"] = None
    if preview_error:
        report["preview_error"] = str(preview_error)
    if write:
        _write_report(path, report, codec, preview_latents)
    return report


def _group_info(gv, attrs: dict, max_errors: int):
    """(report entry of one sample group, its row selection with the chunk files missing behind ok rows)."""
    g, lat = gv.g, gv.array("latents")
    cnt = S.count_group(g, max_errors)
    sel = gv.select(gv.fields)  # presence of the chunk files behind the usable rows (cheap)
    if g.attrs.get("latent_mean") is not None and attrs.get("complete"):
        mean, std = g.attrs["latent_mean"], g.attrs["latent_std"]
    else:
        mean, std, _ = S.channel_stats(g, int(attrs["chunk_rows"]))
    lat_bytes = _disk_bytes(gv.store.path / gv.path / "latents" if gv.path else gv.store.path / "latents")
    info = {
        "rows": cnt["rows"],
        "ok": cnt["ok"],
        "skipped": cnt["skipped"],
        "pending": cnt["pending"],
        "latent_shape": list(lat.shape[1:]),
        "dtype": str(lat.dtype),
        "chunks": list(lat.chunks),
        "latent_bytes_per_sample": lat_bytes / max(1, cnt["ok"]),
        "raw_bytes_per_sample": int(np.prod(lat.shape[1:])) * np.dtype(str(lat.dtype)).itemsize,
        "latent_mean": [round(float(m), 5) for m in mean],
        "latent_std": [round(float(s), 5) for s in std],
        "skip_reasons": cnt["reasons"],
        "skip_examples": cnt["examples"],
        "missing_captions": cnt["missing_captions"],
        "stage_a_shape": list(gv.shape("stage_a")) if gv.has("stage_a") else None,
        "text_embeddings": {n: list(gv.shape(n)) for n in ("clip_text", "clip_text_pooled") if gv.has(n)},
        "missing_chunks": [p.describe() for p in sel.problems],
        "controls": control_report(gv),  # ControlNet controls (datasets/inspect_controls.py)
    }
    return info, sel


def _write_report(path: Path, report: dict, codec, preview_latents) -> None:
    """Save ``report`` as attributes of ``STORE/inspect`` and, with a codec, ``inspect/preview.png``."""
    ig = S.open_store(path, mode="r+").require_group("inspect")
    if codec is not None and preview_latents:
        report["preview_warning"] = _previewer_mismatch(report.get("encoder"), codec)
        try:
            pv = []
            for z in preview_latents:  # groups may differ in shape: one latent at a time
                pv.append(codec.preview(torch.from_numpy(z[None].astype(np.float32)))[0].cpu())
            cols = int(np.ceil(np.sqrt(len(pv))))
            rows = [pv[i:i + cols] for i in range(0, len(pv), cols)]
            target = path / "inspect" / "preview.png"
            report["preview_png"] = str(write_via_local(target, lambda local: save_grid(rows, local)))
        except CascadeKitError as e:  # e.g. no previewer in these weights: the report still counts
            report["preview_error"] = str(e)
    report["controls_preview_png"] = write_canny_preview(path, LatentStore(path).groups)
    ig.attrs.update({"report": report})
    if report["complete"]:
        S.consolidate(path)


def _previewer_mismatch(store_encoder, codec) -> str | None:
    """A warning when the previewer's weights are not the ones recorded with the store's encoder."""
    ident = getattr(codec, "identity", None)
    if not callable(ident) or not isinstance(store_encoder, dict):
        return None
    try:
        mine = ident().get("checkpoints", {}).get("previewer", {}).get("sha256")
        theirs = store_encoder.get("checkpoints", {}).get("previewer", {}).get("sha256")
    except AttributeError:
        return None
    if mine and theirs and mine != theirs:
        return ("the previewer weights differ from those recorded with the store's encoder; "
                "pass the weights the store was encoded with (--weights) for meaningful previews")
    return None


def format_report(r: dict) -> str:
    """Human-readable text of an :func:`inspect_store` report."""
    enc = r.get("encoder") or {}
    lines = [
        f"store      {r['store']}  ({'complete' if r['complete'] else 'INCOMPLETE'}, {r['store_bytes'] / 1e6:.2f} MB)",
        f"format     {r['format']} v{r['format_version']} (cascadekit {r['tool_version']}, created {r['created']})",
        f"encoder    {enc.get('kind', enc.get('name', '?'))}"
        + (" [TINY RANDOM WEIGHTS]" if enc.get("tiny_random_weights") else ""),
        f"samples    {r['rows']} rows, {r['ok']} ok, {r['skipped']} skipped",
    ]
    for gp, g in r["groups"].items():
        lines.append(f"group {gp}: {g['rows']} rows, ok {g['ok']}, skipped {g['skipped']}, pending {g['pending']}")
        lines.append(f"  latents  {g['latent_shape']} {g['dtype']}, chunks {g['chunks']}, "
                     f"{g['latent_bytes_per_sample']:.0f} B/sample on disk (raw {g['raw_bytes_per_sample']} B)")
        if g["stage_a_shape"]:
            lines.append(f"  stage_a  {g['stage_a_shape']}")
        if g["text_embeddings"]:
            lines.append(f"  text     {g['text_embeddings']}")
        lines.append("  mean     " + " ".join(f"{m:+.3f}" for m in g["latent_mean"]))
        lines.append("  std      " + " ".join(f"{s:.3f}" for s in g["latent_std"]))
        for c, ci in (g.get("controls") or {}).items():
            lines.append(f"  control  {c:<8}{' ' if len(c) >= 8 else ''}{ci['shape']} {ci['dtype']}, ok {ci['ok']}, "
                         f"pending {ci['pending']}, {ci['bytes_per_sample']:.0f} B/sample on disk"
                         + (f", factors {ci['factors']}" if "factors" in ci else ""))
        lines.append(f"  captions missing: {g['missing_captions']}")
        if g.get("missing_chunks"):
            lines.append(f"  MISSING  {len(g['missing_chunks'])} chunk file(s) behind ok rows, e.g. "
                         f"{g['missing_chunks'][0]}; run `cascadekit inspect --verify`, then rerun encode/embed-text")
        for reason, n in sorted(g["skip_reasons"].items()):
            ex = [e["key"] for e in g["skip_examples"] if e["reason"] == reason][:3]
            lines.append(f"  skipped  {reason:<20}{n}  e.g. {', '.join(ex)}")
    if r.get("preview_png"):
        lines.append(f"preview    {r['preview_png']}")
    if r.get("controls_preview_png"):
        lines.append(f"canny      {r['controls_preview_png']}")
    if r.get("preview_warning"):
        lines.append(f"warning    {r['preview_warning']}")
    if r.get("preview_error"):
        lines.append(f"no preview {r['preview_error']}")
    return "\n".join(lines)
