"""Compare two or more evaluation reports (folders written by :func:`cascadekit.metrics.evaluate.evaluate`):
means with bootstrap confidence intervals, paired per-image differences against the first report, and the
same images' grids next to each other.

``compare_reports([dir_a, dir_b], out)`` writes into ``out``: ``compare.json`` (everything below),
``compare_per_image.csv`` (one row per compared image: each metric per report + the differences),
``grids/*.png`` (copies of the reports' grids of the images every report has a grid of) and ``index.html``
(tables, interval and difference plots, the grids side by side). Reports over different image sets are refused
unless ``intersect=True`` (then the images all reports evaluated are compared).
"""
from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import plots, report
from .errors import MetricInputError
from .names import PER_IMAGE

RECORD = "compare.json"


@dataclass(frozen=True)
class CompareSettings:
    """intersect: compare the common images of reports over different sets (else refuse); n_boot: bootstrap
    resamples; confidence: interval level in (0,1); seed: the bootstrap's generator; grid_limit: images shown
    side by side."""

    intersect: bool = False
    n_boot: int = 2000
    confidence: float = 0.95
    seed: int = 0
    grid_limit: int = 16

    def __post_init__(self):
        if self.n_boot < 1 or not 0 < self.confidence < 1 or self.grid_limit < 0:
            raise MetricInputError(f"bad compare settings {self}: n_boot >= 1, 0 < confidence < 1, grid_limit >= 0")


@dataclass
class Report:
    """One evaluation report: its folder, label, metrics.json and per-image rows by key (per_image.csv order)."""

    folder: Path
    label: str
    record: dict
    rows: dict[str, dict]


def read_report(folder: str | os.PathLike, label: str | None = None) -> Report:
    """A report folder -> Report; MetricInputError when it is not a readable evaluate report."""
    folder = Path(folder)
    _not_a_comparison(folder)
    try:
        record = json.loads((folder / "metrics.json").read_text())
        with open(folder / "per_image.csv", newline="") as f:
            rows = {r["key"]: _parse_row(r) for r in csv.DictReader(f)}
    except FileNotFoundError as e:
        raise MetricInputError(f"{folder} is not an evaluation report: {Path(e.filename).name} is missing "
                               f"(write one with `cascadekit evaluate ... --out {folder}`)") from None
    except (OSError, ValueError, KeyError) as e:
        raise MetricInputError(f"{folder}: cannot read the report ({type(e).__name__}: {e})") from None
    return Report(folder, label or folder.resolve().name, record, rows)


def _not_a_comparison(folder: Path) -> None:
    """A folder of ``evaluate --compare`` (its metrics.json says ``mode: compare``) is named as such."""
    try:
        record = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return  # read_report says what is wrong with it
    if isinstance(record, dict) and record.get("mode") == "compare":
        subs = " ".join(str(folder / str(r).split("/")[0]) for r in (record.get("reports") or {}).values())
        raise MetricInputError(f"{folder} is a decoder comparison (evaluate --compare), not one report; compare "
                               f"its reports instead: {subs}")


def _parse_row(r: dict) -> dict:
    row = {"key": r["key"], "index": int(r["index"]), "width": int(r["width"]), "height": int(r["height"])}
    row.update({m: float(r[m]) for m in PER_IMAGE if r.get(m) not in (None, "")})
    return row


def bootstrap_mean(values: np.ndarray, settings: CompareSettings, rng: np.random.Generator) -> dict:
    """Mean of the finite ``values`` with a percentile-bootstrap interval: {mean, low, high, n, n_nonfinite}."""
    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    out = {"n": int(finite.size), "n_nonfinite": int(v.size - finite.size), "mean": None, "low": None, "high": None}
    if finite.size == 0:
        return out
    means = np.concatenate([finite[rng.integers(0, finite.size, (n, finite.size))].mean(1)
                            for n in _chunks(settings.n_boot, max(1, 2_000_000 // finite.size))])
    a = (1 - settings.confidence) / 2
    out.update(mean=float(finite.mean()), low=float(np.quantile(means, a)), high=float(np.quantile(means, 1 - a)))
    return out


def _chunks(total: int, size: int):
    while total > 0:
        yield min(size, total)
        total -= size


def paired(base: np.ndarray, other: np.ndarray, higher_better: bool, settings: CompareSettings,
           rng: np.random.Generator) -> dict:
    """Per-image differences ``other - base`` (pairs with a non-finite value left out): the bootstrap mean
    (see :func:`bootstrap_mean`) plus how many images got better / worse / stayed equal."""
    ok = np.isfinite(base) & np.isfinite(other)
    d = other[ok] - base[ok]
    sign = 1 if higher_better else -1
    return {**bootstrap_mean(d, settings, rng), "better": int((sign * d > 0).sum()),
            "worse": int((sign * d < 0).sum()), "equal": int((d == 0).sum()), "pairs_left_out": int((~ok).sum())}


def common_keys(reports: list[Report], intersect: bool) -> list[str]:
    """The keys to compare (first report's order); MetricInputError when the image sets differ and not
    ``intersect``, or when they share no image."""
    sets = [set(r.rows) for r in reports]
    common = set.intersection(*sets)
    if not intersect and any(s != sets[0] for s in sets):
        diff = [f"{r.label}: {len(r.rows)} images, {len(set(r.rows) - common)} not in every report (e.g. "
                f"{', '.join(sorted(set(r.rows) - common)[:3]) or '-'})" for r in reports]
        raise MetricInputError("the reports evaluated different image sets (" + "; ".join(diff) +
                               "); pass --intersect (intersect=True) to compare the images they share")
    if not common:
        raise MetricInputError("the reports share no image; nothing to compare")
    return [k for k in reports[0].rows if k in common]


def labels_of(folders: list, labels: list[str] | None) -> list[str]:
    """Labels given (one per report) or the folder names, made unique with a suffix."""
    if labels is not None and len(labels) != len(folders):
        raise MetricInputError(f"{len(labels)} labels for {len(folders)} reports; give one label per report")
    names = list(labels) if labels is not None else [Path(f).resolve().name or str(f) for f in folders]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 and names.count(n) == 1 else f"{n}#{seen[n]}")
    return out


@dataclass
class Comparison:
    """What a comparison compares, checked before anything is written: reports, image keys, metrics."""

    reports: list[Report]
    keys: list[str]
    metrics: list[str]


def plan_comparison(folders: list[str | os.PathLike], labels: list[str] | None = None,
                    settings: CompareSettings = CompareSettings()) -> Comparison:
    """Read and check the reports (>= 2, the first is the baseline): MetricInputError on unreadable reports,
    different image sets (unless ``settings.intersect``) or no common per-image metric."""
    if len(folders) < 2:
        raise MetricInputError(f"compare needs two or more reports, got {len(folders)}")
    reports = [read_report(f, lb) for f, lb in zip(folders, labels_of(folders, labels))]
    keys = common_keys(reports, settings.intersect)
    metrics = [m for m in PER_IMAGE if all(m in r.rows[keys[0]] for r in reports)]
    if not metrics:
        raise MetricInputError("the reports have no per-image metric in common (psnr, ssim, lpips)")
    return Comparison(reports, keys, metrics)


def write_comparison(plan: Comparison, out_dir: str | os.PathLike,
                     settings: CompareSettings = CompareSettings()) -> dict:
    """Write the files of the module docstring into ``out_dir`` (not one of the reports); returns compare.json."""
    out = Path(out_dir)
    if any(out.resolve() == r.folder.resolve() for r in plan.reports):
        raise MetricInputError(f"the output folder {out} is one of the reports; choose another folder")
    summary = _summary(plan.reports, plan.keys, plan.metrics, settings)
    out.mkdir(parents=True, exist_ok=True)
    grids = _copy_grids(plan.reports, plan.keys, out, settings.grid_limit)
    report.write_json(out / RECORD, summary)
    _write_rows(out / "compare_per_image.csv", plan.reports, plan.keys, plan.metrics)
    _write_html(out / "index.html", summary, grids)
    return summary


def compare_reports(folders: list[str | os.PathLike], out_dir: str | os.PathLike, *, labels: list[str] | None = None,
                    settings: CompareSettings = CompareSettings()) -> dict:
    """Compare the evaluation reports in ``folders`` (>= 2, the first is the baseline of the differences) into
    ``out_dir``: :func:`plan_comparison` then :func:`write_comparison`. Returns the compare.json dictionary."""
    return write_comparison(plan_comparison(folders, labels, settings), out_dir, settings)


def _summary(reports: list[Report], keys: list[str], metrics: list[str], settings: CompareSettings) -> dict:
    rng = np.random.default_rng(settings.seed)
    values = {m: [np.array([r.rows[k][m] for k in keys], np.float64) for r in reports] for m in metrics}
    means = {m: {r.label: bootstrap_mean(values[m][i], settings, rng) for i, r in enumerate(reports)}
             for m in metrics}
    diffs = {m: {r.label: paired(values[m][0], values[m][i], plots.HIGHER_IS_BETTER[m], settings, rng)
                 for i, r in enumerate(reports) if i} for m in metrics}
    fid = {r.label: r.record.get("aggregate", {}).get("fid") for r in reports}
    return {"reports": [{"label": r.label, "folder": str(r.folder), "n_images": len(r.rows),
                         "notice": r.record.get("notice"), "settings": r.record.get("settings", {})} for r in reports],
            "baseline": reports[0].label, "n_images_compared": len(keys), "intersect": settings.intersect,
            "metrics": metrics, "higher_is_better": {m: plots.HIGHER_IS_BETTER[m] for m in metrics},
            "confidence": settings.confidence, "n_boot": settings.n_boot, "seed": settings.seed,
            "means": means, "paired_differences": diffs,
            "fid": fid if any(v is not None for v in fid.values()) else None}


def _write_rows(path: Path, reports: list[Report], keys: list[str], metrics: list[str]) -> None:
    cols = ["key", "width", "height"] + [f"{m}[{r.label}]" for m in metrics for r in reports] + \
        [f"{m}[{r.label}]-[{reports[0].label}]" for m in metrics for r in reports[1:]]
    rows = []
    for k in keys:
        row = {"key": k, "width": reports[0].rows[k]["width"], "height": reports[0].rows[k]["height"]}
        for m in metrics:
            base = reports[0].rows[k][m]
            row.update({f"{m}[{r.label}]": r.rows[k][m] for r in reports})
            row.update({f"{m}[{r.label}]-[{reports[0].label}]": r.rows[k][m] - base for r in reports[1:]
                        if math.isfinite(r.rows[k][m] - base)})
        rows.append(row)
    report.write_csv(path, rows, cols)


def _copy_grids(reports: list[Report], keys: list[str], out: Path, limit: int) -> list[dict]:
    """Copy the grids of the first ``limit`` images that have one in every report: [{key, files: [...]}]."""
    shown = []
    for k in keys:
        if len(shown) >= limit:
            break
        src = [r.folder / "grids" / report.safe_name(k, r.rows[k]["index"]) for r in reports]
        if not all(p.is_file() for p in src):
            continue
        (out / "grids").mkdir(exist_ok=True)
        files = []
        for i, p in enumerate(src):
            name = f"grids/{len(shown):04d}_{i}_{re.sub(r'[^A-Za-z0-9._-]+', '_', k)[:60]}.png"
            shutil.copyfile(p, out / name)
            files.append(name)
        shown.append({"key": k, "files": files})
    return shown


def _interval(s: dict) -> str:
    if s["mean"] is None:
        return "–"
    extra = f" ({s['n_nonfinite']} non-finite left out)" if s.get("n_nonfinite") else ""
    return f"{report._fmt(s['mean'])} [{report._fmt(s['low'])}, {report._fmt(s['high'])}]{extra}"


def _write_html(path: Path, summary: dict, grids: list[dict]) -> None:  # one page template: kept in one place
    e, labels = html.escape, [r["label"] for r in summary["reports"]]
    base, pct = summary["baseline"], f"{round(summary['confidence'] * 100)} %"
    mean_rows = "".join(f"<tr><td>{m.upper()} ({'higher' if summary['higher_is_better'][m] else 'lower'} is "
                        f"better)</td>" + "".join(f"<td>{_interval(summary['means'][m][lb])}</td>" for lb in labels)
                        + "</tr>" for m in summary["metrics"])
    if summary["fid"]:
        mean_rows += "<tr><td>FID (set metric, no interval)</td>" + "".join(
            f"<td>{report._fmt(summary['fid'].get(lb))}</td>" for lb in labels) + "</tr>"
    diff_rows = "".join(f"<tr><td>{m.upper()}</td><td>{e(lb)} − {e(base)}</td><td>{_interval(d)}</td>"
                        f"<td>{d['better']}</td><td>{d['worse']}</td><td>{d['equal']}</td></tr>"
                        for m in summary["metrics"] for lb, d in summary["paired_differences"][m].items())
    figs = "".join(f'<figure style="display:inline-block"><img src="{p["src"]}" alt="{e(p["title"])}">'
                   f"<figcaption>{e(p['title'])}</figcaption></figure>" for p in plots.compare_plots(summary))
    grid_rows = "".join(f"<h3><code>{e(g['key'])}</code></h3><div class=\"row\">" + "".join(
        f'<figure><img src="{e(f)}" alt="{e(lb)}"><figcaption>{e(lb)}</figcaption></figure>'
        for f, lb in zip(g["files"], labels)) + "</div>" for g in grids)
    notices = "".join(f'<p class="notice">{e(r["label"])}: {e(str(r["notice"]))}</p>'
                      for r in summary["reports"] if r.get("notice"))
    path.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cascadekit report comparison</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1600px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}} .row{{display:flex;gap:1em}}
.row figure{{flex:1;margin:0}} img{{max-width:100%}} .notice{{background:#fdd;border:2px solid #c00;padding:.5em}}
</style></head><body><h1>cascadekit report comparison</h1>{notices}
<p>{summary['n_images_compared']} images compared{' (the images every report shares)' if summary['intersect'] else ''};
baseline <b>{e(base)}</b>. Intervals: {pct} percentile bootstrap over images ({summary['n_boot']} resamples).</p>
<table><tr><th>report</th><th>folder</th><th>images</th></tr>{''.join(
    f"<tr><td>{e(r['label'])}</td><td><code>{e(r['folder'])}</code></td><td>{r['n_images']}</td></tr>"
    for r in summary['reports'])}</table>
<h2>Means [{pct} interval]</h2><table><tr><th>metric</th>{''.join(f'<th>{e(lb)}</th>' for lb in labels)}</tr>
{mean_rows}</table>
<h2>Paired per-image differences</h2><table><tr><th>metric</th><th>difference</th><th>mean [{pct} interval]</th>
<th>better</th><th>worse</th><th>equal</th></tr>{diff_rows}</table>
<h2>Plots</h2>{figs}
<h2>The same images</h2><p>Each report's grid: original | reconstruction | error heat-map.</p>
{grid_rows or '<p>no image has a grid in every report</p>'}
<p>Per-image values: <a href="compare_per_image.csv">compare_per_image.csv</a> · all numbers:
<a href="{RECORD}">{RECORD}</a></p></body></html>
""")
