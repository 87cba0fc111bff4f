"""Encode pipeline end to end vs the encoder alone, measured in one run (issue 15: within 5 %).

Each round runs, in this order and in one process:

* ``model``: the encoder alone on pre-decoded images (uint8, decoded before timing), batched exactly like
  the build, with the build's own steps (``encode_loop.to_images`` -> ``codec.encode`` -> host float32);
* one ``build_latent_dataset`` per variant on the JPEG corpus (a fresh store each time): ``low-priority``
  = the builder as shipped (decode workers niced when the encoder is on the CPU), ``same-priority`` = the
  workers at the main process's priority (what the builder did before).

Overhead = e2e wall / model wall - 1 (median over rounds; rounds interleave the cases, so machine load
hits them alike), and fastest e2e / fastest model - 1 (each side's least disturbed round). Also printed: CPU seconds of both (process + its decode workers), and the build's own
``Summary.stage_seconds``: where the main thread's time went (waiting for decoded images, host->device,
encoder, waiting for the writer, returning memory); e2e minus the loop is start-up + finalisation.

    python benchmarks/bench_encode.py [--images 256] [--resolution 128] [--batch 32] [--workers 1]
        [--rounds 3] [--variants low-priority,same-priority] [--device cpu] [--threads N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_datasets import _corpus  # noqa: E402  (sibling script: the JPEG corpus of the datasets benchmark)

from cascadekit.datasets import encode_loop  # noqa: E402
from cascadekit.datasets.builder import build_latent_dataset  # noqa: E402

VARIANTS = {"low-priority": encode_loop.CPU_ENCODER_WORKER_NICE, "same-priority": 0}


def _cpu_seconds(who=None) -> float:
    """CPU seconds of this process and its finished children (the joined decode workers), or of ``who`` only."""
    if who is not None:
        r = resource.getrusage(who)
        return r.ru_utime + r.ru_stime
    return _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _codec(weights, device, dtype, resolution):
    from cascadekit.codec.codec import Codec
    from cascadekit.codec.defaults import default_weights

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Codec.from_pretrained(weights or default_weights(), device=device, dtype=dtype,
                                     encoder_resolution=resolution, components=("effnet",))


def _predecoded(corpus: Path, resolution: int) -> torch.Tensor:
    from cascadekit.codec.images import load_image, resize_center_crop

    files = sorted(corpus.rglob("*.jpg"))
    return torch.stack([torch.from_numpy(np.array(resize_center_crop(load_image(f), resolution))).permute(2, 0, 1)
                        for f in files])


@torch.inference_mode()
def time_model(codec, imgs: torch.Tensor, batch: int, device) -> tuple[float, float]:
    """(wall, CPU) seconds of the encoder alone over ``imgs``, the build's batches and steps."""
    if device.type == "cuda":
        imgs = imgs.pin_memory()
    _sync(device)
    t, c = time.perf_counter(), _cpu_seconds()
    for s in range(0, len(imgs), batch):
        codec.encode(encode_loop.to_images(imgs[s:s + batch], device)).float().cpu()
    _sync(device)
    return time.perf_counter() - t, _cpu_seconds() - c


def time_build(codec, corpus: Path, out: Path, args, nice: int) -> dict:
    """One build into a fresh store with decode workers at niceness +``nice``: wall, CPU, stage seconds."""
    shutil.rmtree(out, ignore_errors=True)
    encode_loop.CPU_ENCODER_WORKER_NICE = nice  # the builder reads it when it makes its loader
    t, c, k = time.perf_counter(), _cpu_seconds(), _cpu_seconds(resource.RUSAGE_CHILDREN)
    summ = build_latent_dataset([corpus], out, codec, resolution=args.resolution, batch_size=args.batch,
                                chunk_rows=max(args.batch, 256), num_workers=args.workers, progress=False)
    wall, cpu = time.perf_counter() - t, _cpu_seconds() - c
    assert summ.ok == args.images, summ
    return {"wall_s": wall, "cpu_s": cpu, "decode_workers_cpu_s": _cpu_seconds(resource.RUSAGE_CHILDREN) - k,
            "stage_seconds": summ.stage_seconds}


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tmp = Path(tempfile.mkdtemp(prefix="bench_encode_"))
    saved = encode_loop.CPU_ENCODER_WORKER_NICE
    try:
        corpus = tmp / "corpus"
        _corpus(corpus, args.images, max(args.resolution, 256))
        codec = _codec(args.weights, device, dtype, args.resolution)
        imgs = _predecoded(corpus, args.resolution)
        time_model(codec, imgs[:args.batch], args.batch, device)  # warm-up
        rounds = []
        for _ in range(args.rounds):
            wall, cpu = time_model(codec, imgs, args.batch, device)
            r = {"load_average": os.getloadavg()[0], "model": {"wall_s": wall, "cpu_s": cpu}}
            for name in args.variants:
                r[name] = time_build(codec, corpus, tmp / "store.zarr", args, VARIANTS[name])
            rounds.append(r)
    finally:
        encode_loop.CPU_ENCODER_WORKER_NICE = saved
        shutil.rmtree(tmp, ignore_errors=True)
    return _result(args, rounds)


def _result(args, rounds: list[dict]) -> dict:
    out = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "images": args.images, "resolution": args.resolution,
           "batch_size": args.batch, "num_workers": args.workers, "device": args.device, "rounds": rounds}
    for name in args.variants:
        out[name] = {
            "overhead_wall_median": statistics.median(r[name]["wall_s"] / r["model"]["wall_s"] - 1 for r in rounds),
            "overhead_cpu_median": statistics.median(r[name]["cpu_s"] / r["model"]["cpu_s"] - 1 for r in rounds),
            # fastest e2e / fastest model: each side's least disturbed round (load on a shared machine only slows)
            "overhead_wall_best": min(r[name]["wall_s"] for r in rounds) / min(r["model"]["wall_s"] for r in rounds) - 1,
            "model_images_per_s": statistics.median(args.images / r["model"]["wall_s"] for r in rounds),
            "e2e_images_per_s": statistics.median(args.images / r[name]["wall_s"] for r in rounds),
        }
    return out


def _print(res: dict, variants) -> None:
    print(f"{res['images']} images, {res['resolution']} px, batch {res['batch_size']}, {res['num_workers']} decode "
          f"worker(s), {res['device']}, {res['threads']} threads, {len(res['rounds'])} rounds")
    for name in variants:
        v = res[name]
        print(f"  {name:<14} model {v['model_images_per_s']:7.1f} img/s  e2e {v['e2e_images_per_s']:7.1f} img/s  "
              f"overhead wall {100 * v['overhead_wall_median']:+.1f} % (best vs best {100 * v['overhead_wall_best']:+.1f} %)"
              f"  CPU {100 * v['overhead_cpu_median']:+.1f} %")
    for i, r in enumerate(res["rounds"]):
        for name in variants:
            st = r[name]["stage_seconds"]
            loop = sum(st.values())
            print(f"  round {i} {name:<14} e2e {r[name]['wall_s']:6.1f} s = loop {loop:6.1f} s ("
                  + ", ".join(f"{k} {v:.2f}" for k, v in st.items())
                  + f") + start/finish {r[name]['wall_s'] - loop:.2f} s; model alone {r['model']['wall_s']:6.1f} s"
                  + f" (load average {r['load_average']:.1f}); decode workers {r[name]['decode_workers_cpu_s']:.1f}"
                  + f" CPU-s vs the model's {r['model']['cpu_s']:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="low-priority,same-priority")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {sorted(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args)
    _print(res, args.variants)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
