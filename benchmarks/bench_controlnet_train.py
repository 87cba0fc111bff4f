"""ControlNet training throughput: controls precomputed into the store vs computed on the fly; bytes per control.

Both modes run the SAME ControlNet training step of the training core (:mod:`cascadekit.generator.tasks.controlnet`:
frozen tiny Stage C, the ControlNet trained); they differ only in where the control comes from:

* ``stored``: the store's ``control_canny`` / ``control_sr`` field (``encode --controls``), no filter, no encoder;
* ``on the fly``: the crop is read again from its PNG, decoded, resized + centre-cropped, then filtered every step
  (``cv2.Canny`` for canny; the EfficientNetV2-S encoder (real architecture, random tiny-set weights) for sr), as
  the official ``train_c_controlnet.py`` does (it also runs the image encoder for the latents every step, which the
  stored mode never does and this benchmark does not count: the ratio is a lower bound).

Timing: ``samples_per_s`` of the core's log for every step after the first (warm-up) of each run; the two modes'
runs alternate ``--repeats`` times; the fastest step of each mode gives the ratio (the machine's load from other
jobs only ever slows a step down), medians are reported too. Bytes per sample: the control arrays' files on disk / ok rows.

    python benchmarks/bench_controlnet_train.py --control canny --resolution 256 --batch 4 --steps 6
"""
from __future__ import annotations

import argparse
import json
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


def run_mode(store: Path, cfg, init: Path, codec, out: Path) -> list[float]:
    from generator_helpers import FixedEmpty

    from cascadekit.generator.train_controlnet import train_controlnet

    res = train_controlnet(store, cfg, out, init=init, device="cpu", text_encoder=FixedEmpty(), image_encoder=codec,
                           log=lambda m: None)
    return [r["samples_per_s"] for r in res.history[1:]]


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
    speeds = {"stored": [], "on_the_fly": []}
    for r in range(args.repeats):
        for mode, store in (("stored", stored), ("on_the_fly", bare)):
            speeds[mode] += run_mode(store, cfg, init, codec, tmp / f"run_{mode}_{r}")
    med = {m: statistics.median(v) for m, v in speeds.items()}
    best = {m: max(v) for m, v in speeds.items()}
    result = {
        "control": args.control, "bottleneck": cfg.bottleneck, "resolution": args.resolution, "batch": args.batch,
        "steps_per_run": args.steps, "repeats": args.repeats, "threads": args.threads,
        "samples_per_s_fastest_step": {m: round(v, 3) for m, v in best.items()},
        "samples_per_s_median": {m: round(v, 3) for m, v in med.items()},
        "ratio_stored_over_on_the_fly": round(best["stored"] / best["on_the_fly"], 3),
        "ratio_of_medians": round(med["stored"] / med["on_the_fly"], 3),
        "control_bytes": control_bytes(stored),
        "machine": "shared 2-core CPU development machine under heavy load from other jobs (CPU only)",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
