"""The evaluation driver: stream images through a `reconstruct` callable, compute per-image and aggregate metrics,
write the report. It knows nothing about the codec; the CLI passes the codec's reconstruction function."""
from __future__ import annotations

import inspect
import math
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import plots, report
from .errors import MetricInputError
from .fid import FEATURE_NAME, FeatureStats, InceptionFeatures, batches_by_size, frechet_distance
from .images import pil_to_tensor, read_image, tensor_to_rgb
from .lpips_metric import LPIPSMetric
from .names import METRICS, PER_IMAGE, parse_metrics
from .pixel import psnr_per_image, ssim_per_image


def check_weights(metrics: Iterable[str], *, lpips_net: str = "alex",
                  weights_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Locate the backbone files the chosen metrics need (nothing is loaded); raises MissingWeightsError
    naming the first missing file. Lets a caller fail before any expensive work."""
    from .lpips_metric import NETS
    from .weights import INCEPTION, find_weights

    names = parse_metrics(metrics)
    found = {}
    if "lpips" in names:
        if lpips_net not in NETS:
            raise MetricInputError(f"LPIPS net must be one of {sorted(NETS)}, got {lpips_net!r}")
        found["lpips"] = find_weights(NETS[lpips_net][0], weights_dir)
    if "fid" in names:
        found["fid"] = find_weights(INCEPTION, weights_dir)
    return found


def load_item(key: str, item) -> tuple[torch.Tensor, str | None]:
    """(key, PIL image | (C,H,W) float tensor in [0,1] | path | zero-argument callable returning one of those)
    -> ((3,H,W) float32 in [0,1], conversion note). A callable may also return (image, note). A callable's exceptions become MetricInputError (the image is
    then skipped and listed with the reason)."""
    if callable(item) and not isinstance(item, (torch.Tensor, Image.Image)):
        try:
            item = item()
        except MetricInputError:
            raise
        except Exception as e:  # a caller's loader (e.g. the codec's image preparation) refused the input
            raise MetricInputError(f"{type(e).__name__}: {e}") from e
        if isinstance(item, tuple) and len(item) == 2:  # (image, conversion note) from the caller's loader
            x, note = load_item(key, item[0])
            return x, item[1] or note
    if isinstance(item, (str, os.PathLike)):
        img, note = read_image(item)
        return pil_to_tensor(img), note
    if isinstance(item, Image.Image):
        from .images import to_rgb

        img, note = to_rgb(item)
        return pil_to_tensor(img), note
    if isinstance(item, torch.Tensor):
        x, note = tensor_to_rgb(item)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1 or math.isnan(lo) or math.isnan(hi):
            raise MetricInputError(f"image tensor values span [{lo:.4g}, {hi:.4g}], expected [0,1]")
        return x, note
    raise MetricInputError(f"cannot use {type(item).__name__} as an image (give a path, PIL image or tensor)")


def _call_reconstruct(reconstruct: Callable, batch: torch.Tensor, keys: list[str], seed: int) -> torch.Tensor:
    """Call reconstruct(batch[, keys=..][, seed=..]) passing only the keyword arguments it accepts; without a
    `seed` parameter torch's global generator is seeded instead."""
    try:
        params = inspect.signature(reconstruct).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {}
    if var_kw or "keys" in params:
        kwargs["keys"] = list(keys)
    if var_kw or "seed" in params:
        kwargs["seed"] = seed
    else:
        torch.manual_seed(seed)
    return reconstruct(batch, **kwargs)


def _summary(values: list[float]) -> dict:
    vals = np.asarray(values, np.float64)
    if vals.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "count": 0}
    finite = vals[np.isfinite(vals)]
    mean = math.fsum(vals.tolist()) / vals.size  # +inf if any image was reproduced exactly (PSNR)
    return {"mean": mean, "std": float(finite.std()) if finite.size else None,
            "min": float(vals.min()), "max": float(vals.max()), "count": int(vals.size),
            "finite_mean": (math.fsum(finite.tolist()) / finite.size) if finite.size else None}


# long only by its docstring (the report contract); the steps are _Evaluation's methods
def evaluate(images: Iterable[tuple[str, object]], reconstruct: Callable, out_dir: str | os.PathLike, *,
             seed: int = 0, metrics: str | Iterable[str] = METRICS, batch_size: int = 4,
             weights_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             lpips_net: str = "alex", grid_samples: int = 8, heatmap_scale: float = report.HEATMAP_SCALE,
             settings: dict | None = None, notice: str | None = None, extra_skipped: list[dict] | None = None,
             max_images: int | None = None, progress: bool = True, worst_k: int = 8) -> dict:
    """Reconstruct every image, measure, and write the report into `out_dir`.

    images: iterable of (key, item) with item a path, a PIL image (any mode), a (C,H,W) float tensor in [0,1]
        (C in 1..4), or a zero-argument callable returning one of those (lazy loading). Grayscale is replicated
        to RGB, alpha composited over white (listed under "converted"); unreadable items are skipped and listed
        under "skipped". Consecutive images of one size are batched.
    reconstruct: callable (B,3,H,W) float in [0,1] -> (B,3,H,W) reconstructions (same shape). If it accepts a
        `seed` keyword it gets `seed + index of the batch's first image`, else torch's global RNG is seeded with
        that; if it accepts `keys` it gets the batch's keys (e.g. to read stored latents). If it raises, the
        batch's images are skipped and listed with the error; a result of the wrong shape or with NaN/inf is an
        error (MetricInputError).
    metrics: subset of ("psnr", "ssim", "lpips", "fid"). PSNR/SSIM use data_range=1; aggregates of per-image
        metrics are means of per-image values; FID compares the set of originals with the set of reconstructions.
    max_images: stop after this many evaluated (readable) images.
    settings: extra entries for the report's settings (e.g. the codec identity); notice: a warning shown at the
        top of index.html and stored in metrics.json (e.g. "tiny random weights").
    worst_k: images per metric in index.html's worst-images gallery (with histograms, metric vs size/aspect
        plots and a sortable per-image table, all embedded: metrics.plots).
    Writes metrics.json, per_image.csv, grids/*.png (first `grid_samples` images), index.html,
    fid_stats_original.npz / fid_stats_reconstruction.npz. Returns the metrics.json dictionary.
    Raises MetricInputError (after writing the report) when no image could be evaluated.
    """
    names = parse_metrics(metrics)
    if batch_size < 1:
        raise MetricInputError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _Evaluation(names, out, weights_dir, device, lpips_net, grid_samples, heatmap_scale, worst_k,
                      list(extra_skipped or []))
    from tqdm.auto import tqdm

    total = len(images) if hasattr(images, "__len__") else None
    if total is not None and max_images is not None:
        total = min(total, max_images)
    run.bar = tqdm(desc="evaluate", unit="img", total=total, disable=not progress)
    t0 = time.perf_counter()
    index = 0
    for keys, batch in batches_by_size(run.readable(images, max_images), batch_size):
        if run.batch(reconstruct, keys, batch, index, seed + index):
            index += len(keys)
        run.bar.update(len(keys))
    run.bar.close()
    elapsed = time.perf_counter() - t0
    aggregate, fid_note = run.aggregate()
    result = {
        "n_images": len(run.rows),
        "notice": notice,
        "aggregate": aggregate,
        "settings": {
            "seed": seed, "seed_rule": "batch seed = seed + index of the batch's first image",
            "batch_size": batch_size, "max_images": max_images, "metrics": list(names), "data_range": 1.0,
            "lpips_net": lpips_net if "lpips" in names else None,
            "fid_features": FEATURE_NAME if "fid" in names else None,
            "fid_note": fid_note, "heatmap_scale": heatmap_scale, "device": str(device),
            "seconds": elapsed, "torch": torch.__version__, "python": platform.python_version(),
            **(settings or {}),
        },
        "skipped": run.skipped,
        "converted": run.converted,
        "per_image_csv": "per_image.csv",
    }
    run.write_report(result)
    return result


class _Evaluation:
    """One :func:`evaluate` run's backbones and accumulators (rows, skipped, grids, FID statistics) and its steps."""

    def __init__(self, names, out: Path, weights_dir, device, lpips_net: str, grid_samples: int,
                 heatmap_scale: float, worst_k: int, skipped: list[dict]):
        self.names, self.out, self.grid_dir = names, out, out / "grids"
        self.grid_samples, self.heatmap_scale = grid_samples, heatmap_scale
        # Build the backbones first: a missing weight file fails before any reconstruction work.
        self.lpips = LPIPSMetric(lpips_net, weights_dir=weights_dir, device=device) if "lpips" in names else None
        self.inception = InceptionFeatures(weights_dir=weights_dir, device=device) if "fid" in names else None
        self.stats_orig, self.stats_rec = FeatureStats(), FeatureStats()
        self.skipped = skipped  # inputs the caller already ruled out ({"key", "reason"}) and those found here
        self.converted: list[dict] = []
        self.rows: list[dict] = []
        self.grids: list[dict] = []
        self.per_image = tuple(m for m in PER_IMAGE if m in names)
        self.worst = plots.WorstK(worst_k, self.per_image, heatmap_scale)
        self.bar = None

    def readable(self, images, max_images: int | None):
        """(key, (C,H,W) tensor) of the loadable items, at most ``max_images``; others are listed as skipped."""
        n = 0
        for key, item in images:
            if max_images is not None and n >= max_images:
                return
            key = str(key)
            try:
                x, note = load_item(key, item)
            except MetricInputError as e:
                self.skipped.append({"key": key, "reason": str(e)})
                self.bar.update(1)
                continue
            if note:
                self.converted.append({"key": key, "note": note})
            n += 1
            yield key, x

    def batch(self, reconstruct: Callable, keys: list[str], batch: torch.Tensor, index: int, batch_seed: int) -> bool:
        """Reconstruct, measure and record one batch; False when its images were skipped (listed with why)."""
        try:
            rec = _call_reconstruct(reconstruct, batch, keys, batch_seed)
        except Exception as e:  # the codec refused these images (size, memory, ...): list them, go on
            reason = f"reconstruct failed on its batch: {type(e).__name__}: {e}"
            self.skipped.extend({"key": k, "reason": reason} for k in keys)
            return False
        rec = _checked_reconstruction(rec, batch, keys)
        try:
            values, feats = self._measure(rec, batch)
        except MetricInputError as e:  # e.g. images too small for the SSIM window or the LPIPS network
            self.skipped.extend({"key": k, "reason": f"cannot be measured: {e}"} for k in keys)
            return False
        if feats is not None:
            self.stats_orig.update(feats[0])
            self.stats_rec.update(feats[1])
        self._record(keys, batch, rec, values, index, batch_seed)
        return True

    def _measure(self, rec: torch.Tensor, batch: torch.Tensor):
        """({metric: per-image values}, (Inception features of originals, of reconstructions) or None)."""
        values = {}
        if "psnr" in self.names:
            values["psnr"] = psnr_per_image(rec, batch, data_range=1.0).tolist()
        if "ssim" in self.names:
            values["ssim"] = ssim_per_image(rec, batch, data_range=1.0).tolist()
        if self.lpips is not None:
            values["lpips"] = self.lpips(rec, batch).tolist()
        feats = (self.inception(batch), self.inception(rec)) if self.inception is not None else None
        return values, feats

    def _record(self, keys, batch, rec, values, index: int, batch_seed: int) -> None:
        """One per-image row each, the worst-k candidates and the first ``grid_samples`` grids."""
        for i, key in enumerate(keys):
            row = {"index": index + i, "key": key, "width": batch.shape[-1], "height": batch.shape[-2],
                   "seed": batch_seed}
            row.update({m: values[m][i] for m in values})
            self.rows.append(row)
            self.worst.offer(key, batch[i], rec[i], row)
            if len(self.grids) < self.grid_samples:
                self.grid_dir.mkdir(exist_ok=True)
                name = report.safe_name(key, index + i)
                report.grid_image(batch[i], rec[i], self.heatmap_scale).save(self.grid_dir / name)
                self.grids.append({"file": f"grids/{name}", **row})

    def aggregate(self) -> tuple[dict, str | None]:
        """(the per-metric summaries and FID, why FID is missing or None); writes the two FID .npz files."""
        aggregate = {m: _summary([r[m] for r in self.rows]) for m in PER_IMAGE if m in self.names}
        fid_note = None
        if "fid" in self.names:
            if self.stats_orig.n >= 2:
                so, sr = self.stats_orig, self.stats_rec
                aggregate["fid"] = frechet_distance(so.mu, so.sigma, sr.mu, sr.sigma)
                so.save(self.out / "fid_stats_original.npz")
                sr.save(self.out / "fid_stats_reconstruction.npz")
            else:
                aggregate["fid"] = None
                fid_note = f"FID needs at least 2 images, got {self.stats_orig.n}"
        return aggregate, fid_note

    def write_report(self, result: dict) -> None:
        """metrics.json, per_image.csv and index.html; MetricInputError (after writing) when no image was evaluated."""
        out, rows = self.out, self.rows
        report.write_json(out / "metrics.json", result)
        report.write_csv(out / "per_image.csv", rows, ["index", "key", "width", "height", "seed", *[
            m for m in PER_IMAGE if m in self.names]])
        extra = plots.plots_html(plots.make_plots(rows, self.per_image), self.worst.ranked(), rows, self.per_image)
        report.write_index_html(out / "index.html", result, self.grids, extra)
        if not rows:
            reasons = "; ".join(f"{s['key']}: {s['reason']}" for s in self.skipped[:5]) or "the input was empty"
            raise MetricInputError(f"no image could be evaluated ({reasons}); report written to {out}")


def _checked_reconstruction(rec, batch: torch.Tensor, keys: list[str]) -> torch.Tensor:
    """``rec`` as float32 on the CPU clamped to [0, 1]; MetricInputError for a wrong shape or NaN/inf."""
    if not isinstance(rec, torch.Tensor) or tuple(rec.shape) != tuple(batch.shape):
        got = tuple(rec.shape) if isinstance(rec, torch.Tensor) else type(rec).__name__
        raise MetricInputError(f"reconstruct returned {got} for a batch of shape {tuple(batch.shape)} "
                               f"(keys {keys[:3]}...); it must return reconstructions of the same shape")
    rec = rec.detach().to("cpu", torch.float32)
    if not torch.isfinite(rec).all():
        raise MetricInputError(f"reconstruct returned NaN/inf for keys {keys}")
    return rec.clamp(0, 1)  # decoders overshoot slightly; an image file would clamp the same way
