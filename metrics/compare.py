"""Compare decoders on the same images: one evaluation per decoder, then one side-by-side report.

``compare(images, {"base": rec_a, "fine-tuned": rec_b}, out)`` runs :func:`~cascadekit.metrics.evaluate.evaluate`
for each decoder into ``out/<label>/`` (the full single-decoder report, same seeds for every decoder) and
writes into ``out``:

* ``compare.json`` — every decoder's aggregates and, for each later decoder, the per-metric delta against
  the first (``later - first``: PSNR/SSIM up is better, LPIPS/FID down is better);
* ``compare_per_image.csv`` — one row per image every decoder evaluated: each metric per decoder + deltas;
* ``compare_grids/*.png`` — original | reconstruction of each decoder, in label order (first ``grid_samples``);
* ``index.html`` — the tables and grids (each decoder's own report: ``<label>/index.html``);
* ``metrics.json`` — written last, the folder's record as for a single evaluation (``mode: "compare"``, every
  decoder's aggregates, the deltas, the per-decoder report folders), so the output-folder convention of
  ``cascadekit evaluate`` (``cli/out_folder.py``) recognises a comparison folder and ``--overwrite`` replaces it.
"""
from __future__ import annotations

import csv
import html
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import report
from .errors import MetricInputError
from .evaluate import _call_reconstruct, evaluate
from .names import PER_IMAGE

RECORD = "metrics.json"  # the folder's record, as evaluate's (written last)
OWN_NAMES = frozenset({RECORD, "compare.json", "compare_per_image.csv", "compare_grids", "index.html"})
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "fid": False}
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Recorder:
    """Wraps a reconstruct callable and keeps the first ``keep`` (original, reconstruction) pairs by key."""

    def __init__(self, fn: Callable, keep: int):
        self.fn, self.keep = fn, keep
        self.kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor, keys: list[str], seed: int) -> torch.Tensor:
        rec = _call_reconstruct(self.fn, x, keys, seed)
        for i, k in enumerate(keys):
            if len(self.kept) < self.keep and isinstance(rec, torch.Tensor) and rec.shape == x.shape:
                self.kept[k] = (x[i].detach().cpu().float(), rec[i].detach().cpu().float().clamp(0, 1))
        return rec


def _check_labels(decoders: dict) -> list[str]:
    labels = list(decoders)
    if len(labels) < 2:
        raise MetricInputError(f"compare needs at least two decoders, got {labels}")
    bad = [lb for lb in labels if not LABEL.match(str(lb))]
    if bad:
        raise MetricInputError(f"decoder labels must be folder names (letters, digits, . _ -), got {bad}")
    taken = [lb for lb in labels if lb in OWN_NAMES]
    if taken:
        raise MetricInputError(f"decoder labels {taken} are names the comparison writes itself ({sorted(OWN_NAMES)})")
    return labels


def _per_image(folder: Path) -> dict[str, dict]:
    with open(folder / "per_image.csv", newline="") as f:
        return {r["key"]: {m: float(r[m]) for m in PER_IMAGE if r.get(m) not in (None, "")} for r in csv.DictReader(f)}


def _deltas(results: dict[str, dict], labels: list[str]) -> dict[str, dict[str, float | None]]:
    """``{label: {metric: mean(label) - mean(first)}}`` for every later label (FID: the values themselves)."""
    first = results[labels[0]]["aggregate"]
    out = {}
    for lb in labels[1:]:
        agg, d = results[lb]["aggregate"], {}
        for m, v in agg.items():
            a = first.get(m)
            va = v.get("mean") if isinstance(v, dict) else v
            fa = a.get("mean") if isinstance(a, dict) else a
            d[m] = None if va is None or fa is None else float(va) - float(fa)
        out[lb] = d
    return out


def _side_by_side(original: torch.Tensor, recs: list[torch.Tensor]) -> Image.Image:
    panels = [report._to_uint8_hwc(t) for t in (original, *recs)]
    h = max(p.shape[0] for p in panels)
    gap = np.full((h, report.GAP, 3), 255, np.uint8)
    row = []
    for p in panels:
        row += [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255), gap]
    img = Image.fromarray(np.concatenate(row[:-1], axis=1))
    side = max(img.size)
    if side > report.PANEL_MAX_SIDE * len(panels):
        s = report.PANEL_MAX_SIDE * len(panels) / side
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BILINEAR)
    return img


def compare(images: Iterable[tuple[str, object]], decoders: dict[str, Callable], out_dir: str | os.PathLike, *,
            grid_samples: int = 8, **evaluate_kwargs) -> dict:
    """Evaluate every decoder on ``images`` and write the comparison (module docstring). Returns compare.json.

    images: as for :func:`evaluate` (iterated once per decoder; lazy items are loaded again). decoders:
    ``{label: reconstruct}`` in report order, the first is the baseline of the deltas; every decoder gets
    the same batch seeds. evaluate_kwargs: seed, metrics, batch_size, ... of :func:`evaluate`.
    """
    labels = _check_labels(decoders)
    images = list(images)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, kept = {}, {}
    for lb in labels:
        rec = _Recorder(decoders[lb], grid_samples)
        results[lb] = evaluate(images, rec, out / lb, grid_samples=grid_samples, **evaluate_kwargs)
        kept[lb] = rec.kept
    rows, metric_cols = _joined_rows(out, labels)
    grids = _write_grids(out, labels, kept, rows)
    summary = {"decoders": labels, "baseline": labels[0],
               "aggregate": {lb: results[lb]["aggregate"] for lb in labels},
               "delta_vs_baseline": _deltas(results, labels), "higher_is_better": HIGHER_IS_BETTER,
               "n_images_compared": len(rows), "reports": {lb: f"{lb}/index.html" for lb in labels},
               "notice": next((results[lb]["notice"] for lb in labels if results[lb].get("notice")), None),
               "settings": {lb: results[lb]["settings"] for lb in labels}}
    report.write_json(out / "compare.json", summary)
    columns = ["key"] + [f"{m}_{lb}" for m in metric_cols for lb in labels] + \
        [f"{m}_delta_{lb}" for m in metric_cols for lb in labels[1:]]
    report.write_csv(out / "compare_per_image.csv", rows, columns)
    _write_html(out / "index.html", summary, rows, grids, metric_cols)
    report.write_json(out / RECORD, record_of(summary))
    return summary


def record_of(summary: dict) -> dict:
    """The top-level ``metrics.json`` of a comparison folder: per-decoder aggregates and deltas (compare.json
    holds the same plus every decoder's settings)."""
    keep = ("decoders", "baseline", "aggregate", "delta_vs_baseline", "higher_is_better", "n_images_compared",
            "reports", "notice")
    return {"mode": "compare", "comparison": "compare.json", **{k: summary[k] for k in keep}}


def _joined_rows(out: Path, labels: list[str]) -> tuple[list[dict], list[str]]:
    """Rows ``{key, <m>_<label>..., <m>_delta_<label>...}`` of the images every decoder evaluated, and the metrics."""
    tables = {lb: _per_image(out / lb) for lb in labels}
    base = tables[labels[0]]
    common = [k for k in base if all(k in tables[lb] for lb in labels)]
    metrics = [m for m in PER_IMAGE if common and m in base[common[0]]]
    rows = []
    for k in common:
        row = {"key": k}
        for m in metrics:
            row.update({f"{m}_{lb}": tables[lb][k][m] for lb in labels})
            row.update({f"{m}_delta_{lb}": tables[lb][k][m] - base[k][m] for lb in labels[1:]})
        rows.append(row)
    return rows, metrics


def _write_grids(out: Path, labels: list[str], kept: dict, rows: list[dict]) -> list[dict]:
    grids = []
    for i, row in enumerate(rows):
        k = row["key"]
        if not all(k in kept[lb] for lb in labels):
            continue
        (out / "compare_grids").mkdir(exist_ok=True)
        name = report.safe_name(k, i)
        _side_by_side(kept[labels[0]][k][0], [kept[lb][k][1] for lb in labels]).save(out / "compare_grids" / name)
        grids.append({"file": f"compare_grids/{name}", **row})
    return grids


def _write_html(path: Path, summary: dict, rows: list[dict], grids: list[dict], metrics: list[str]) -> None:
    e, f, labels = html.escape, report._fmt, summary["decoders"]
    head = "".join(f"<th>{e(lb)}</th>" for lb in labels) + "".join(f"<th>Δ {e(lb)}</th>" for lb in labels[1:])
    agg = []
    for m in summary["aggregate"][labels[0]]:
        vals = [summary["aggregate"][lb].get(m) for lb in labels]
        vals = [v.get("mean") if isinstance(v, dict) else v for v in vals]
        deltas = [summary["delta_vs_baseline"][lb].get(m) for lb in labels[1:]]
        better = "higher" if HIGHER_IS_BETTER.get(m, True) else "lower"
        agg.append(f"<tr><td>{e(m)} ({better} is better)</td>" + "".join(f"<td>{f(v)}</td>" for v in vals + deltas)
                   + "</tr>")
    per = []
    for r in rows:
        cells = "".join(f"<td>{f(r.get(f'{m}_{lb}'))}</td>" for m in metrics for lb in labels) + \
            "".join(f"<td>{f(r.get(f'{m}_delta_{lb}'))}</td>" for m in metrics for lb in labels[1:])
        per.append(f"<tr><td><code>{e(r['key'])}</code></td>{cells}</tr>")
    per_head = "".join(f"<th>{e(m)} {e(lb)}</th>" for m in metrics for lb in labels) + \
        "".join(f"<th>Δ{e(m)} {e(lb)}</th>" for m in metrics for lb in labels[1:])
    figs = "".join(f"<figure><img src=\"{e(g['file'])}\"><figcaption><code>{e(g['key'])}</code> original | "
                   f"{' | '.join(e(lb) for lb in labels)}</figcaption></figure>" for g in grids)
    notice = f"<p style=\"background:#fdd;padding:.6em\"><b>{e(str(summary['notice']))}</b></p>" if summary["notice"] else ""
    links = " · ".join(f"<a href=\"{e(u)}\">{e(lb)} report</a>" for lb, u in summary["reports"].items())
    path.write_text(f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>cascadekit decoder comparison</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.3em .6em}}
img{{max-width:100%}}</style></head><body><h1>Decoder comparison</h1>{notice}<p>{links}; Δ = decoder − {e(labels[0])}</p>
<h2>Aggregates</h2><table><tr><th>metric</th>{head}</tr>{''.join(agg)}</table>
<h2>Grids</h2>{figs}<h2>Per image ({len(rows)})</h2><table><tr><th>key</th>{per_head}</tr>{''.join(per)}</table>
</body></html>
""")
