"""ControlNet training throughput: controls precomputed into the store vs computed on the fly; bytes per control.

Both modes run the SAME ControlNet training step of the training core (:mod:`cascadekit.generator.tasks.controlnet`:
frozen tiny Stage C, the ControlNet trained); they differ only in where the control comes from:

* ``stored``: the store's ``control_canny`` / ``control_sr`` field (``encode --controls``), no filter, no encoder;
* ``on the fly``: the crop is read again from its PNG, decoded, resized + centre-cropped, then filtered every step
  (``cv2.Canny`` for canny; the EfficientNetV2-S encoder (real architecture, random tiny-set weights) for sr), as
  the official ``train_c_controlnet.py`` does (it also runs the image encoder for the latents every step, which the
  stored mode never does and this benchmark does not count: the ratio is a lower bound).

Timing: every update after the first (warm-up) of each run (``TrainingLoop.train_step``, the core's update),
as wall seconds and as CPU seconds of this process (``time.process_time``: all its threads; other jobs on a shared
machine slow the wall clock down, much less the CPU time) per sample; the two modes' runs alternate ``--repeats``
times; the fastest step of each mode gives the ratio (load only ever slows a step down), medians are reported too,
and the machine's load average before and after. ``inputs_only_cpu_ms_per_sample``: reading a batch and making
its inputs (the control included) without the networks, CPU ms per sample: the part the two modes differ in.
Bytes per sample: the control arrays' files on disk / ok rows.

    python benchmarks/bench_controlnet_train.py --control canny --resolution 256 --batch 4 --steps 6
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_images(folder: Path, n: int, side: int) -> Path:
    """``n`` photo-like PNGs (smooth gradients + rectangles: real edges for Canny) with captions."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for i in range(n):
        img = np.stack([yy * rng.random() + xx * rng.random() for _ in range(3)], -1) * 200
        for _ in range(6):
            y, x = rng.integers(0, side - side // 4, 2)
            img[y:y + side // 4, x:x + side // 5] = rng.integers(0, 256, 3)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"im{i:04d}.png")
        (folder / f"im{i:04d}.txt").write_text(f"caption {i}")
    return folder


def build_store(images: Path, out: Path, codec, side: int, controls) -> Path:
    from controlnet_train_helpers import TinyText

    from cascadekit.datasets.builder import build_latent_dataset
    from cascadekit.datasets.text_embeddings import add_text_embeddings

    build_latent_dataset([str(images)], out, codec, resolution=side, batch_size=4, chunk_rows=16, num_workers=0,
                         progress=False, controls=controls)
    add_text_embeddings(out, TinyText(), batch_size=16, progress=False)
    return out


def run_mode(store: Path, cfg, init: Path, codec, out: Path) -> tuple[list[tuple[float, float]], float]:
    """(wall s, CPU s of this process) per sample of every update after the first (warm-up) of one run, and the
    CPU s per sample of the inputs alone (:func:`inputs_cost`)."""
    from generator_helpers import FixedEmpty

    from cascadekit.generator.train_controlnet import controlnet_loop

    loop = controlnet_loop(store, cfg, out, init=init, device="cpu", text_encoder=FixedEmpty(), image_encoder=codec,
                           log=lambda m: None)
    per_sample = []
    try:
        for _ in range(cfg.steps):
            wall, cpu = time.perf_counter(), time.process_time()
            loop.train_step()
            per_sample.append(((time.perf_counter() - wall) / cfg.batch_size,
                               (time.process_time() - cpu) / cfg.batch_size))
        inputs = inputs_cost(loop, cfg.batch_size)
    finally:
        loop.close()
    return per_sample[1:], inputs


def inputs_cost(loop, batch: int, repeats: int = 5) -> float:
    """Median CPU seconds per sample of reading one batch and making its inputs (latents, conditioning, control)
    alone, without the networks: where the two modes differ."""
    group = loop.data.groups[0]
    idx = list(range(min(batch, group.size)))
    draws = loop.task.draws(torch.Generator().manual_seed(0), len(idx), group)
    times = []
    for _ in range(repeats):
        cpu = time.process_time()
        loop.task.inputs(loop.data.read(group.name, idx), draws, torch.device("cpu"))
        times.append((time.process_time() - cpu) / len(idx))
    return statistics.median(times)


def control_bytes(store: Path) -> dict:
    from cascadekit.datasets.access import LatentStore
    from cascadekit.datasets.inspect_controls import control_report

    return {c: {"shape": v["shape"], "dtype": v["dtype"], "bytes_per_sample": round(v["bytes_per_sample"])}
            for c, v in control_report(LatentStore(store).groups[0]).items()}


def main() -> None:  # over 60 lines: argument parsing, two stores, alternating runs and the report in one place
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--control", choices=("canny", "sr"), default="canny")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_controlnet_train.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from controlnet_train_helpers import stage_c_file

    from cascadekit.codec.codec import Codec
    from cascadekit.codec.weights.tiny import write_tiny_weights
    from cascadekit.generator.tasks.controlnet_config import ControlNetTrainConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench_cn_"))
    weights = write_tiny_weights(tmp / "w", with_text=False, models=["effnet"])
    codec = Codec.from_pretrained(weights, components=("effnet",), encoder_resolution=args.resolution)
    images = make_images(tmp / "images", args.images, args.resolution)
    stored = build_store(images, tmp / "stored.zarr", codec, args.resolution, ("canny", "sr", "inpaint"))
    bare = build_store(images, tmp / "bare.zarr", codec, args.resolution, ())
    init = stage_c_file(tmp / "sc")
    extra = {"bottleneck_mode": "large", "large_widths": [256, 256, 256]} if args.control == "sr" else {}
    cfg = ControlNetTrainConfig.from_dict(dict(preset=f"controlnet_{args.control}", model="tiny",
                                               batch_size=args.batch, steps=args.steps, save_every=10**6,
                                               log_every=10**6, precision="fp32", backbone_init="stable_cascade",
                                               **extra))
    load_before = os.getloadavg()
    steps = {"stored": [], "on_the_fly": []}
    inputs = {"stored": [], "on_the_fly": []}
    for r in range(args.repeats):
        for mode, store in (("stored", stored), ("on_the_fly", bare)):
            per_step, per_input = run_mode(store, cfg, init, codec, tmp / f"run_{mode}_{r}")
            steps[mode] += per_step
            inputs[mode].append(per_input)
    wall = {m: [w for w, _ in v] for m, v in steps.items()}
    cpu = {m: [c for _, c in v] for m, v in steps.items()}
    result = {
        "control": args.control, "bottleneck": cfg.bottleneck, "resolution": args.resolution, "batch": args.batch,
        "steps_per_run": args.steps, "repeats": args.repeats, "threads": args.threads,
        "samples_per_s_fastest_step": {m: round(1 / min(v), 3) for m, v in wall.items()},
        "samples_per_s_median": {m: round(1 / statistics.median(v), 3) for m, v in wall.items()},
        "cpu_s_per_sample_fastest": {m: round(min(v), 4) for m, v in cpu.items()},
        "cpu_s_per_sample_median": {m: round(statistics.median(v), 4) for m, v in cpu.items()},
        "ratio_stored_over_on_the_fly": round(min(wall["on_the_fly"]) / min(wall["stored"]), 3),
        "ratio_of_medians": round(statistics.median(wall["on_the_fly"]) / statistics.median(wall["stored"]), 3),
        "cpu_ratio_of_medians": round(statistics.median(cpu["on_the_fly"]) / statistics.median(cpu["stored"]), 3),
        "inputs_only_cpu_ms_per_sample": {m: round(1000 * statistics.median(v), 2) for m, v in inputs.items()},
        "control_bytes": control_bytes(stored),
        "machine": f"shared {os.cpu_count()}-core CPU development machine (CPU only), other engineers' jobs running",
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
