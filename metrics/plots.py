"""Report plots: per-metric histograms, metric vs image size and aspect ratio, the worst-k gallery, and the
sortable per-image table of ``index.html``.

Every picture is embedded in ``index.html`` as a ``data:`` URI (plots as PNG, the worst-k thumbnails as JPEG), so
a report folder holds the same files as before and stays self-contained. matplotlib is imported
lazily inside :func:`_figure` (a heavy import only needed when a report is written); its object API is used
(``Figure`` + the Agg canvas), never pyplot, so no global figure state is touched.
"""
from __future__ import annotations

import base64
import heapq
import html
import io
import math
from dataclasses import dataclass, field

import torch
from PIL import Image

from . import report

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
TABLE_MAX_ROWS = 5000  # the per-image table in index.html; per_image.csv always has every row
THUMB_SIDE = 256  # worst-k thumbnails: each panel's longer side at most this (the page stays small)

SORT_JS = """<script>
function ckSort(th){const t=th.closest('table'),b=t.tBodies[0],i=th.cellIndex,
asc=th.dataset.dir!=='asc';t.querySelectorAll('th').forEach(h=>delete h.dataset.dir);th.dataset.dir=asc?'asc':'desc';
const v=r=>{const c=r.cells[i],s=c.dataset.v!==undefined?c.dataset.v:c.textContent,n=parseFloat(s);
return isNaN(n)?s:n};const rows=[...b.rows].sort((x,y)=>{const a=v(x),c=v(y);
const o=(typeof a==='number'&&typeof c==='number')?a-c:String(a).localeCompare(String(c));return asc?o:-o});
rows.forEach(r=>b.appendChild(r))}
</script>"""


def worst_first(metric: str, value: float) -> float:
    """A sort key that is smallest for the worst image of ``metric`` (lowest PSNR/SSIM, highest LPIPS)."""
    return value if HIGHER_IS_BETTER.get(metric, True) else -value


def data_uri(img: Image.Image, fmt: str = "PNG") -> str:
    """A PIL image as a ``data:image/...;base64,`` URI (PNG or JPEG)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def thumbnail(original: torch.Tensor, reconstruction: torch.Tensor, scale: float) -> Image.Image:
    """original | reconstruction | error heat-map (report.grid_image), panels at most THUMB_SIDE pixels."""
    grid = report.grid_image(original, reconstruction, scale)
    f = min(1.0, 3 * THUMB_SIDE / grid.width)
    return grid if f == 1.0 else grid.resize((max(1, round(grid.width * f)), max(1, round(grid.height * f))),
                                             Image.Resampling.BILINEAR)


@dataclass
class WorstK:
    """Keeps the ``k`` worst images per metric while an evaluation streams (bounded memory: k thumbnails per
    metric, see :func:`thumbnail`).

    offer(key, original, reconstruction, values): original/reconstruction (3,H,W) float in [0,1];
    values {metric: value} for this image. ranked(): {metric: [{"src", "key", "value"}], worst first}."""

    k: int
    metrics: tuple[str, ...]
    heatmap_scale: float = report.HEATMAP_SCALE
    _heaps: dict = field(default_factory=dict)
    _count: int = 0

    def offer(self, key: str, original: torch.Tensor, reconstruction: torch.Tensor, values: dict) -> None:
        thumb = None
        for m in self.metrics:
            v = values.get(m)
            if self.k <= 0 or v is None or math.isnan(v):
                continue
            heap = self._heaps.setdefault(m, [])
            badness = -worst_first(m, float(v))  # the heap's root is the least bad image kept
            if len(heap) >= self.k and badness <= heap[0][0]:
                continue
            thumb = thumb or thumbnail(original, reconstruction, self.heatmap_scale)
            self._count += 1
            item = (badness, -self._count, key, float(v), thumb)
            (heapq.heapreplace if len(heap) >= self.k else heapq.heappush)(heap, item)

    def ranked(self) -> dict[str, list[dict]]:
        return {m: [{"src": data_uri(t, "JPEG"), "key": key, "value": v}
                    for _, _, key, v, t in sorted(heap, key=lambda e: (-e[0], -e[1]))]
                for m, heap in self._heaps.items()}


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is heavy
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _finite(rows: list[dict], metric: str) -> list[dict]:
    return [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]


def _png(fig) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def histogram(rows: list[dict], metric: str) -> str | None:
    """A histogram of the finite per-image values of ``metric`` as a PNG data URI; None when there are none."""
    vals = [r[metric] for r in _finite(rows, metric)]
    if not vals:
        return None
    fig, (ax,) = _figure(4.2, 3)
    ax.hist(vals, bins=min(30, max(5, len(vals) // 2)), color="#4477aa", edgecolor="white")
    ax.set_xlabel(metric.upper())
    ax.set_ylabel("images")
    n_inf = len(rows) - len(vals)
    ax.set_title(f"{metric.upper()} over {len(vals)} images" + (f" (+{n_inf} non-finite)" if n_inf else ""),
                 fontsize=9)
    return _png(fig)


def versus_size(rows: list[dict], metric: str) -> str | None:
    """Two scatter plots, ``metric`` vs megapixels and vs aspect ratio (width/height), as a PNG data URI;
    None without values."""
    rs = [r for r in _finite(rows, metric) if r.get("width") and r.get("height")]
    if not rs:
        return None
    y = [r[metric] for r in rs]
    fig, (a, b) = _figure(8, 3, ncols=2)
    a.scatter([r["width"] * r["height"] / 1e6 for r in rs], y, s=12, alpha=.7, color="#228833")
    a.set_xlabel("megapixels")
    b.scatter([r["width"] / r["height"] for r in rs], y, s=12, alpha=.7, color="#aa3377")
    b.set_xlabel("aspect ratio (width / height)")
    for ax in (a, b):
        ax.set_ylabel(metric.upper())
    return _png(fig)


def make_plots(rows: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    """Histogram and size/aspect plots of every per-image metric in ``rows`` (dicts with width, height and
    metric values): [{"src": PNG data URI, "title"}]."""
    made = []
    for m in metrics:
        for fn, title in ((histogram, f"{m.upper()} histogram"),
                          (versus_size, f"{m.upper()} vs image size and aspect ratio")):
            src = fn(rows, m)
            if src is not None:
                made.append({"src": src, "title": title})
    return made


def _cell(v) -> str:
    if isinstance(v, float):
        key = "Infinity" if v == math.inf else ("-Infinity" if v == -math.inf else repr(v))
        return f'<td data-v="{key}">{report._fmt(v)}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def sortable_table(rows: list[dict], columns: list[str], max_rows: int = TABLE_MAX_ROWS) -> str:
    """An HTML table of ``rows`` whose headers sort it on click (inline JS, numbers numerically)."""
    head = "".join(f'<th onclick="ckSort(this)" title="click to sort">{html.escape(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c, "")) for c in columns) + "</tr>" for r in rows[:max_rows])
    more = f"<p>first {max_rows} of {len(rows)} rows; all in per_image.csv</p>" if len(rows) > max_rows else ""
    return (f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}'
            f"{SORT_JS}")


def plots_html(plots: list[dict], worst: dict[str, list[dict]], rows: list[dict], metrics: tuple[str, ...]) -> str:
    """The report's extra sections: plots (:func:`make_plots`), the worst-k gallery per metric
    (:meth:`WorstK.ranked`), the sortable per-image table of ``rows``."""
    e = html.escape
    figs = "".join(f'<figure style="display:inline-block"><img src="{p["src"]}" alt="{e(p["title"])}">'
                   f"<figcaption>{e(p['title'])}</figcaption></figure>" for p in plots)
    gallery = []
    for m, entries in worst.items():
        side = "lowest" if HIGHER_IS_BETTER.get(m, True) else "highest"
        items = "".join(f'<figure><img src="{w["src"]}" alt="{e(w["key"])}"><figcaption><code>{e(w["key"])}'
                        f"</code> {m.upper()} {report._fmt(w['value'])}</figcaption></figure>" for w in entries)
        gallery.append(f"<h3>{m.upper()}: the {len(entries)} images with the {side} values</h3>{items}")
    table = sortable_table(rows, ["index", "key", "width", "height", *metrics]) if rows else "<p>no images</p>"
    return (f"<h2>Plots</h2>{figs or '<p>no plots</p>'}<h2>Worst images</h2>"
            f"{''.join(gallery) or '<p>none</p>'}<h2>Per-image table</h2>{table}")



def compare_plots(summary: dict) -> list[dict]:
    """For each metric of a report comparison (metrics.compare_reports' summary): the means with their
    intervals and the paired differences with theirs, as PNG data URIs [{"src", "title"}]."""
    made = []
    for m in summary["metrics"]:
        means, diffs = summary["means"][m], summary["paired_differences"][m]
        fig, (a, b) = _figure(8, 2.8, ncols=2)
        _error_bars(a, means, f"{m.upper()} mean")
        _error_bars(b, diffs, f"{m.upper()} − {summary['baseline']}")
        b.axvline(0, color="#888", lw=1)
        made.append({"src": _png(fig), "title": f"{m.upper()}: means and paired differences "
                                                f"({round(summary['confidence'] * 100)} % intervals)"})
    return made


def _error_bars(ax, stats: dict[str, dict], xlabel: str) -> None:
    shown = [(lb, s) for lb, s in stats.items() if s["mean"] is not None]
    for y, (lb, s) in enumerate(shown):
        ax.errorbar([s["mean"]], [y], xerr=[[s["mean"] - s["low"]], [s["high"] - s["mean"]]], fmt="o",
                    color="#4477aa", capsize=4)
    ax.set_yticks(range(len(shown)), [lb for lb, _ in shown])
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.set_xlabel(xlabel)
