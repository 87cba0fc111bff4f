"""Metric throughput (images/s) of cascadekit.metrics on CPU, and on CUDA when available.

For each metric the timed call is exactly what the evaluation driver runs per batch:

    psnr        psnr_per_image(rec, orig)              float64, per image
    ssim        ssim_per_image(rec, orig)              float64, 11x11 Gaussian, per image
    lpips-alex  LPIPSMetric("alex")(rec, orig)          both images through AlexNet
    lpips-vgg   LPIPSMetric("vgg")(rec, orig)           both images through VGG16
    fid-feat    InceptionFeatures()(x)                  one image set: uint8 -> TF resize to 299 -> pool3
    fid-stats   FeatureStats.update(features)           float64 streaming mean/co-moment, 256-row merges
    frechet     frechet_distance at D=2048              per call (full-rank covariances), not per image

Images are random (B,3,S,S) in [0,1]. Backbone weights: --weights-dir, else random-init files written to a
temporary folder under the real file names (the speed of a network does not depend on its weight values).

    python benchmarks/bench_metrics.py [--size 256] [--batch 8] [--batches 3] [--devices cpu,cuda]
                                       [--json benchmarks/results/bench_metrics.json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch


def write_random_backbones(folder: Path) -> None:
    """Random-init AlexNet/VGG16 features and torch-fidelity Inception under the file names the metrics need."""
    import torchvision
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3 as FE

    from cascadekit.metrics.weights import ALEXNET, INCEPTION, VGG16

    torch.manual_seed(0)
    alex = torchvision.models.alexnet(weights=None).features
    torch.save({f"features.{k}": v for k, v in alex.state_dict().items()}, folder / ALEXNET.filename)
    vgg = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()}, folder / VGG16.filename)
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with mock.patch.object(FE, "load_state_dict", lambda self, *a, **k: None):
        net = FE("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
    torch.save(net.state_dict(), folder / INCEPTION.filename)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, batches: int) -> tuple[float, float]:
    """(median, min) seconds per call over `batches` timed calls after one warm-up call. On a shared machine
    the minimum is the more faithful speed of the code; the median shows the contention."""
    fn()
    sync(device)
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.min(times))


def bench_device(device: torch.device, weights_dir: Path, size: int, batch: int, batches: int) -> list[dict]:
    from cascadekit.metrics.fid import FeatureStats, InceptionFeatures, frechet_distance
    from cascadekit.metrics.lpips_metric import LPIPSMetric
    from cascadekit.metrics.pixel import psnr_per_image, ssim_per_image

    g = torch.Generator().manual_seed(0)
    orig = torch.rand(batch, 3, size, size, generator=g)
    rec = (orig + 0.05 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)
    o, r = orig.to(device), rec.to(device)
    rows = []

    def add(name, times, per_call_images, note=""):
        med, best = times
        rows.append({"metric": name, "device": str(device), "size": size, "batch": per_call_images,
                     "seconds_per_call_median": med, "seconds_per_call_min": best,
                     "images_per_s": (per_call_images / best) if per_call_images else None,
                     "images_per_s_median": (per_call_images / med) if per_call_images else None, "note": note})

    add("psnr", timed(lambda: psnr_per_image(r, o), device, batches), batch)
    add("ssim", timed(lambda: ssim_per_image(r, o), device, batches), batch)
    for net in ("alex", "vgg"):
        m = LPIPSMetric(net, weights_dir=weights_dir, device=device)
        add(f"lpips-{net}", timed(lambda m=m: m(r, o), device, batches), batch, "image pairs/s")
        del m
    inc = InceptionFeatures(weights_dir=weights_dir, device=device)
    add("fid-feat", timed(lambda: inc(r), device, batches), batch, "one set; FID of recon needs 2x")
    feats = np.tile(inc(r).numpy(), (256 // batch + 1, 1))[:256]  # one buffer flush worth of rows

    def accumulate():
        stats = FeatureStats()
        stats.update(feats)
        return stats.comoment  # forces the float64 merge

    add("fid-stats", timed(accumulate, torch.device("cpu"), batches), 256, "CPU float64, per 256-row merge")
    rng = np.random.default_rng(0)
    f1, f2 = rng.standard_normal((4096, 2048)), rng.standard_normal((4096, 2048)) * 1.1 + 0.1
    mu1, s1, mu2, s2 = f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)
    add("frechet", timed(lambda: frechet_distance(mu1, s1, mu2, s2), torch.device("cpu"), 2), 0,
        "seconds per FID at D=2048 (CPU, full rank)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--devices", default=None, help="comma list (default: cpu, plus cuda when available)")
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(args.weights_dir) if args.weights_dir else Path(tmp)
        if not args.weights_dir:
            write_random_backbones(wd)
        rows = []
        for d in devices:
            rows += bench_device(torch.device(d), wd, args.size, args.batch, args.batches)
    print(f"{'metric':12s} {'device':7s} {'size':>5s} {'batch':>5s} {'s/call min':>10s} {'median':>9s} "
          f"{'img/s':>9s}  note (img/s from the fastest call)")
    for r in rows:
        ips = f"{r['images_per_s']:9.1f}" if r["images_per_s"] is not None else f"{'-':>9s}"
        print(f"{r['metric']:12s} {r['device']:7s} {r['size']:5d} {r['batch']:5d} {r['seconds_per_call_min']:10.4f} "
              f"{r['seconds_per_call_median']:9.4f} {ips}  {r['note']}")
    if args.json:
        env = {"torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
               "machine": platform.machine(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
               else None, "weights": "given" if args.weights_dir else "random-init (same speed)",
               "cpu_count": os.cpu_count(), "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
