"""Encode pipeline end to end vs the encoder alone, measured in one run (issue 15: within 5 %).

Each round runs, in this order and in one process:

* ``model``: the encoder alone on pre-decoded images (uint8, decoded before timing), batched exactly like
  the build, with the build's own steps (``encode_loop.to_images`` -> ``codec.encode`` -> host float32);
* one ``build_latent_dataset`` per variant on the JPEG corpus (a fresh store each time), the decode route
  forced: ``decode-threads`` = decoding between encoder calls on one thread per encoder thread (what the
  builder does for a CPU encoder whose threads fill every core), ``worker-niced`` = one DataLoader process
  per ``--workers`` decoding ahead at niceness +10 (the builder before; what it still does with spare
  cores or on CUDA), ``worker-same-priority`` = the same at the main process's priority.

Overhead = e2e wall / model wall - 1 (median over rounds; rounds interleave the cases, so machine load
hits them alike), fastest e2e / fastest model - 1, the same in CPU seconds (process + decode workers),
and steady state: the encode loop alone (``Summary.stage_seconds`` summed, start-up and finalisation
left out) vs the model. The CPU accounting splits each build's CPU seconds by thread (time.thread_time
through wrappers installed by this script only): the main thread per stage and outside the loop
(start-up + finalisation), the writer thread, the decoding (threads here, or the worker processes), and
the rest (the encoder's OpenMP helpers, zarr's I/O loop); ``encoder`` = main thread in ``encode`` +
that rest, vs the model's CPU seconds.

    python benchmarks/bench_encode.py [--images 768] [--resolution 128] [--batch 32] [--workers 1]
        [--source-side S] [--rounds 3] [--variants decode-threads,worker-niced] [--device cpu] [--threads N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import threading
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_datasets import _corpus  # noqa: E402  (sibling script: the JPEG corpus of the datasets benchmark)

from cascadekit.datasets import builder, encode_loop, writer  # noqa: E402
from cascadekit.datasets.builder import build_latent_dataset  # noqa: E402
from cascadekit.datasets.decode_workers import DecodeThreads, TaskDataset  # noqa: E402

NICE = encode_loop.CPU_ENCODER_WORKER_NICE
# variant -> how the build gets its batches (the builder's make_source replaced for that build)
VARIANTS = {
    "decode-threads": lambda ds, nw, device: DecodeThreads(ds, torch.get_num_threads()),
    "worker-niced": lambda ds, nw, device: _loader(ds, nw, device, NICE),
    "worker-same-priority": lambda ds, nw, device: _loader(ds, nw, device, 0),
}


def _loader(ds, nw, device, nice: int):
    encode_loop.CPU_ENCODER_WORKER_NICE = nice  # make_loader reads it
    try:
        return encode_loop.make_loader(ds, nw, device)
    finally:
        encode_loop.CPU_ENCODER_WORKER_NICE = NICE


class CpuAccount:
    """Thread CPU seconds of a build's parts, through wrappers around the builder's functions (bench only)."""

    def __init__(self):
        self.parts: dict[str, float] = {}
        self._lock = threading.Lock()
        self._saved = []

    def add(self, part: str, seconds: float) -> None:
        with self._lock:
            self.parts[part] = self.parts.get(part, 0.0) + seconds

    def _wrap(self, owner, name: str, part):
        fn = getattr(owner, name)
        self._saved.append((owner, name, fn))

        def timed(*a, **k):
            c = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                self.add(part(a) if callable(part) else part, time.thread_time() - c)
        setattr(owner, name, timed)

    def __enter__(self):
        orig_stage = encode_loop.StageTimes.stage
        account = self

        @contextmanager
        def stage(times, name):
            c = time.thread_time()
            try:
                with orig_stage(times, name):
                    yield
            finally:
                account.add(f"main: {name}", time.thread_time() - c)
        self._saved.append((encode_loop.StageTimes, "stage", orig_stage))
        encode_loop.StageTimes.stage = stage
        self._wrap(writer.ChunkWriter, "add", "writer thread")
        self._wrap(TaskDataset, "decode", "decoding (threads)")  # in a worker process it counts there, unseen
        self._wrap(builder, "_run", "main: _run")
        return self

    def __exit__(self, *exc):
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)


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


def time_build(codec, corpus: Path, out: Path, args, variant: str) -> dict:
    """One build into a fresh store through ``variant``'s decode route: wall, CPU, stage seconds, CPU parts."""
    shutil.rmtree(out, ignore_errors=True)
    saved = builder.make_source
    builder.make_source = VARIANTS[variant]
    try:
        with CpuAccount() as acc:
            t, c, k, m = (time.perf_counter(), _cpu_seconds(resource.RUSAGE_SELF),
                          _cpu_seconds(resource.RUSAGE_CHILDREN), time.thread_time())
            summ = build_latent_dataset([corpus], out, codec, resolution=args.resolution, batch_size=args.batch,
                                        chunk_rows=max(args.batch, 256), num_workers=args.workers, progress=False)
            wall, proc = time.perf_counter() - t, _cpu_seconds(resource.RUSAGE_SELF) - c
            kids, main = _cpu_seconds(resource.RUSAGE_CHILDREN) - k, time.thread_time() - m
    finally:
        builder.make_source = saved
    assert summ.ok == args.images, summ
    return {"wall_s": wall, "cpu_s": proc + kids, "decode_workers_cpu_s": kids,
            "stage_seconds": summ.stage_seconds, "cpu_parts": _cpu_parts(acc.parts, proc, kids, main)}


def _cpu_parts(parts: dict, proc: float, kids: float, main: float) -> dict:
    """CPU seconds by part (see the module docstring); they sum to the build's process + children CPU."""
    run = parts.pop("main: _run", 0.0)
    stages = {k: v for k, v in parts.items() if k.startswith("main: ")}
    out = {"main: start-up + finalisation": main - run, **stages,
           "main: loop, outside stages": run - sum(stages.values()),
           "writer thread": parts.get("writer thread", 0.0),
           "decoding (threads)": parts.get("decoding (threads)", 0.0), "decoding (worker processes)": kids}
    out["other threads (encoder's OpenMP helpers, zarr I/O)"] = (
        proc - main - out["writer thread"] - out["decoding (threads)"])
    out["encoder (main: encode + other threads)"] = (out.get("main: encode", 0.0)
                                                     + out["other threads (encoder's OpenMP helpers, zarr I/O)"])
    return out


def _warm_up(codec, tmp: Path, args) -> None:
    """One untimed build per variant of one batch of images: the first build of a process pays one-off
    costs (lazy imports, codec set-up) that are no part of either route."""
    small = tmp / "warm"
    _corpus(small, args.batch, max(args.resolution, 256))
    for name in args.variants:
        saved, builder.make_source = builder.make_source, VARIANTS[name]
        try:
            build_latent_dataset([small], tmp / "warm.zarr", codec, resolution=args.resolution, batch_size=args.batch,
                                 num_workers=args.workers, progress=False, overwrite=True)
        finally:
            builder.make_source = saved
        shutil.rmtree(tmp / "warm.zarr")


def _source_side(args) -> int:
    """The JPEGs' short side: ``--source-side``, else 256 or the resolution when larger (files are side x 1.25 side)."""
    return args.source_side or max(args.resolution, 256)


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tmp = Path(tempfile.mkdtemp(prefix="bench_encode_"))
    try:
        corpus = tmp / "corpus"
        _corpus(corpus, args.images, _source_side(args))
        codec = _codec(args.weights, device, dtype, args.resolution)
        imgs = _predecoded(corpus, args.resolution)
        time_model(codec, imgs[:args.batch], args.batch, device)  # warm-up
        _warm_up(codec, tmp, args)
        rounds = []
        for i in range(args.rounds):
            wall, cpu = time_model(codec, imgs, args.batch, device)
            r = {"load_average": os.getloadavg()[0], "model": {"wall_s": wall, "cpu_s": cpu}}
            for name in args.variants[::-1] if i % 2 else args.variants:  # alternate which build goes first
                r[name] = time_build(codec, corpus, tmp / "store.zarr", args, name)
            rounds.append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _result(args, rounds)


def _loop_s(build: dict) -> float:
    """The build's encode loop (its main thread's stages), start-up and finalisation left out."""
    return sum(build["stage_seconds"].values())


def _result(args, rounds: list[dict]) -> dict:
    out = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "images": args.images, "resolution": args.resolution,
           "source_jpeg": f"{_source_side(args)}x{int(_source_side(args) * 1.25)}",
           "batch_size": args.batch, "num_workers": args.workers, "device": args.device, "rounds": rounds}
    med = statistics.median
    for name in args.variants:
        parts = [r[name]["cpu_parts"] for r in rounds]
        out[name] = {
            "overhead_wall_median": med(r[name]["wall_s"] / r["model"]["wall_s"] - 1 for r in rounds),
            "overhead_cpu_median": med(r[name]["cpu_s"] / r["model"]["cpu_s"] - 1 for r in rounds),
            # fastest e2e / fastest model: each side's least disturbed round (load on a shared machine only slows)
            "overhead_wall_best": min(r[name]["wall_s"] for r in rounds) / min(r["model"]["wall_s"] for r in rounds) - 1,
            "overhead_steady_median": med(_loop_s(r[name]) / r["model"]["wall_s"] - 1 for r in rounds),
            "model_images_per_s": med(args.images / r["model"]["wall_s"] for r in rounds),
            "e2e_images_per_s": med(args.images / r[name]["wall_s"] for r in rounds),
            "steady_images_per_s": med(args.images / _loop_s(r[name]) for r in rounds),
            "cpu_parts_median_s": {k: med(p[k] for p in parts) for k in parts[0]},
            "model_cpu_median_s": med(r["model"]["cpu_s"] for r in rounds),
        }
    return out


def _print(res: dict, variants) -> None:
    print(f"{res['images']} images, {res['resolution']} px from {res['source_jpeg']} JPEGs, batch {res['batch_size']}, {res['num_workers']} decode "
          f"worker(s), {res['device']}, {res['threads']} threads, {len(res['rounds'])} rounds")
    for name in variants:
        v = res[name]
        print(f"  {name:<20} model {v['model_images_per_s']:6.1f} img/s  e2e {v['e2e_images_per_s']:6.1f} img/s "
              f"(steady {v['steady_images_per_s']:6.1f})  overhead wall {100 * v['overhead_wall_median']:+.1f} % "
              f"(best vs best {100 * v['overhead_wall_best']:+.1f} %, steady {100 * v['overhead_steady_median']:+.1f} %)"
              f"  CPU {100 * v['overhead_cpu_median']:+.1f} %")
    for name in variants:
        v = res[name]
        print(f"  CPU seconds of a {name} build (medians; the model alone: {v['model_cpu_median_s']:.2f})")
        for k, c in v["cpu_parts_median_s"].items():
            print(f"    {k:<52} {c:7.3f}  ({100 * c / v['model_cpu_median_s']:5.1f} % of the model's)")
    for i, r in enumerate(res["rounds"]):
        for name in variants:
            st = r[name]["stage_seconds"]
            loop = sum(st.values())
            print(f"  round {i} {name:<20} e2e {r[name]['wall_s']:6.1f} s = loop {loop:6.1f} s ("
                  + ", ".join(f"{k} {v:.2f}" for k, v in st.items())
                  + f") + start/finish {r[name]['wall_s'] - loop:.2f} s; model alone {r['model']['wall_s']:6.1f} s"
                  + f" (load average {r['load_average']:.1f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=768)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--source-side", type=int, default=None,
                    help="short side of the synthetic JPEGs (default: max(resolution, 256)); e.g. 1024 with --resolution 768")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="decode-threads,worker-niced")
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
