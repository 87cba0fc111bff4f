"""Evaluation report files: metrics.json, per-image CSV, PNG grids (original | reconstruction | error heat-map)
and an index.html that shows the aggregates and the grids. Everything is written inside the given folder."""
from __future__ import annotations

import contextlib
import csv
import html
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HEATMAP_SCALE = 0.25  # mean absolute error (over RGB, images in [0,1]) that maps to the top of the colour scale
PANEL_MAX_SIDE = 384  # grid panels are downscaled so that their longer side is at most this
GAP = 4


def _jsonable(x):
    """Replace non-finite floats (PSNR of identical images is +inf) by strings; JSON has no inf/nan."""
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _jsonable(x.item())
    return x


@contextlib.contextmanager
def _naming(path: Path):
    """An OSError while writing ``path`` (a full disk has no file name) carries ``path``, for the message."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def write_json(path: str | os.PathLike, data: dict) -> Path:
    path = Path(path)
    with _naming(path):
        path.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")
    return path


def write_csv(path: str | os.PathLike, rows: list[dict], columns: list[str]) -> Path:
    """One row per image; floats with full precision, missing values empty."""
    path = Path(path)
    with _naming(path), open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float) else r[k]))
                        for k in columns})
    return path


def heat_colours(err: np.ndarray) -> np.ndarray:
    """(H,W) values in [0,1] -> (H,W,3) uint8 'hot' colours: black -> red -> yellow -> white."""
    e = np.clip(err, 0.0, 1.0)[..., None]
    r = np.clip(e * 3.0, 0, 1)
    g = np.clip(e * 3.0 - 1.0, 0, 1)
    b = np.clip(e * 3.0 - 2.0, 0, 1)
    return (np.concatenate([r, g, b], axis=-1) * 255).round().astype(np.uint8)


def error_heatmap(original: torch.Tensor, reconstruction: torch.Tensor, scale: float = HEATMAP_SCALE) -> np.ndarray:
    """(3,H,W) [0,1] pair -> (H,W,3) uint8 heat-map of the per-pixel mean absolute error, `scale` = white."""
    err = (reconstruction.float() - original.float()).abs().mean(0).cpu().numpy() / scale
    return heat_colours(err)


def _to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def grid_image(original: torch.Tensor, reconstruction: torch.Tensor, scale: float = HEATMAP_SCALE) -> Image.Image:
    """original | reconstruction | error heat-map side by side, each panel at most PANEL_MAX_SIDE pixels."""
    panels = [Image.fromarray(_to_uint8_hwc(original)), Image.fromarray(_to_uint8_hwc(reconstruction)),
              Image.fromarray(error_heatmap(original, reconstruction, scale))]
    w, h = panels[0].size
    f = min(1.0, PANEL_MAX_SIDE / max(w, h))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    if size != (w, h):
        panels = [p.resize(size, Image.Resampling.BICUBIC if i < 2 else Image.Resampling.NEAREST)
                  for i, p in enumerate(panels)]
    out = Image.new("RGB", (3 * size[0] + 2 * GAP, size[1]), (255, 255, 255))
    for i, p in enumerate(panels):
        out.paste(p, (i * (size[0] + GAP), 0))
    return out


def safe_name(key: str, index: int) -> str:
    """A file name for a grid: index prefix + the key with anything unusual replaced (keys may contain '/')."""
    return f"{index:04d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', key)[:80]}.png"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4f}"
    return html.escape(str(v))


def write_index_html(path: str | os.PathLike, result: dict, grids: list[dict], extra_html: str = "") -> Path:
    """index.html: settings, aggregate table, skipped/converted inputs, and the grids with per-image metrics.

    result: the metrics.json dictionary. grids: [{"file": relative png path, "key": ..., "<metric>": value}].
    extra_html: sections placed after the grids (the plots, worst-k gallery and sortable table of metrics.plots).
    """
    agg = result.get("aggregate", {})
    e = html.escape
    rows = []
    for name, stats in agg.items():
        if isinstance(stats, dict):
            rows.append(f"<tr><td>{e(name)}</td><td>{_fmt(stats.get('mean'))}</td><td>{_fmt(stats.get('std'))}</td>"
                        f"<td>{_fmt(stats.get('min'))}</td><td>{_fmt(stats.get('max'))}</td>"
                        f"<td>{_fmt(stats.get('count'))}</td></tr>")
        else:
            rows.append(f"<tr><td>{e(name)}</td><td colspan=5>{_fmt(stats)}</td></tr>")
    settings = "".join(f"<tr><td>{e(str(k))}</td><td>{e(json.dumps(_jsonable(v)))}</td></tr>"
                       for k, v in result.get("settings", {}).items())
    skipped = "".join(f"<li><code>{e(str(s['key']))}</code>: {e(str(s['reason']))}</li>"
                      for s in result.get("skipped", []))
    converted = "".join(f"<li><code>{e(str(c['key']))}</code>: {e(str(c['note']))}</li>"
                        for c in result.get("converted", []))
    notice = (f'<p style="background:#fdd;border:2px solid #c00;padding:.6em;font-weight:bold">'
              f'{e(str(result["notice"]))}</p>') if result.get("notice") else ""
    metric_names = [m for m in ("psnr", "ssim", "lpips") if m in result.get("settings", {}).get("metrics", [])]
    figs = []
    for g in grids:
        caption = " · ".join(f"{m.upper()} {_fmt(g.get(m))}" for m in metric_names)
        figs.append(f"<figure><img src=\"{e(g['file'])}\" alt=\"{e(g['key'])}\"><figcaption><code>{e(g['key'])}"
                    f"</code> {caption}</figcaption></figure>")
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cascadekit evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}} figure{{margin:1em 0}} img{{max-width:100%}}
code{{background:#f4f4f4}}</style></head><body>
<h1>cascadekit evaluation</h1>
{notice}
<p>{result.get('n_images', 0)} images evaluated, {len(result.get('skipped', []))} skipped.
Aggregates of PSNR/SSIM/LPIPS are means of per-image values; FID is computed between the originals and the
reconstructions as sets.</p>
<h2>Aggregates</h2>
<table><tr><th>metric</th><th>mean</th><th>std</th><th>min</th><th>max</th><th>images</th></tr>{''.join(rows)}</table>
<h2>Settings</h2><table>{settings}</table>
<h2>Skipped inputs</h2>{f'<ul>{skipped}</ul>' if skipped else '<p>none</p>'}
<h2>Converted inputs</h2>{f'<ul>{converted}</ul>' if converted else '<p>none</p>'}
<h2>Samples</h2>
<p>Each row: original | reconstruction | error heat-map (mean absolute error over RGB; black 0, white ≥
{result.get('settings', {}).get('heatmap_scale', HEATMAP_SCALE)}).</p>
{''.join(figs) if figs else '<p>no samples</p>'}
{extra_html}
<p>Per-image values: <a href="per_image.csv">per_image.csv</a> · all numbers: <a href="metrics.json">metrics.json</a></p>
</body></html>
"""
    path = Path(path)
    with _naming(path):
        path.write_text(doc)
    return path
