"""Stage B training throughput: Stage A + EfficientNet latents read from a store vs recomputed every step.

Both modes run the SAME Stage B training step of the training core (:class:`TrainingLoop` driving the Stage B
task: pyramid noise, adaptive loss weight, AdamW, clipping); they differ only in where ``x0`` (Stage A latents)
and the ``effnet`` condition come from:

* ``store``: a latent store (``encode --stage-a``) read through :class:`~cascadekit.generator.stage_b_data.StageBData`;
* ``fly``: images (B,3,R,R) already decoded in memory go through Stage A's encoder and the EfficientNetV2-S
  (real architectures, random weights) every step, the EfficientNet on the image nearest-downscaled by
  f ~ U(0.5, 1) (snapped to multiples of 32), as the official ``train_b.py`` does.

The steps of both modes are interleaved in one process (load from other processes hits both alike); the
fastest step of each is reported. Peak memory (CUDA: max allocated; CPU: peak RSS) comes from one run of each
mode in its own subprocess. Writes JSON (default ``benchmarks/results/bench_stage_b_train.json``).

    python benchmarks/bench_stage_b_train.py --resolution 256 --batch 2 --steps 4
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# a Stage B with the lite layout at reduced width for CPU runs (4 levels, patch 2, the lite block pattern / 4)
SMALL_LITE = dict(c_hidden=[80, 144, 288, 288], nhead=[-1, 3, 6, 6], blocks=[[1, 1, 3, 1], [1, 3, 1, 1]],
                  block_repeat=[[1, 1, 1, 1], [1, 1, 1, 1]], c_cond=288, c_clip=1280)


def _store(path: Path, n: int, res: int, enc) -> None:
    from cascadekit.datasets import store as S

    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(n, 3, res, res, generator=g)
    with torch.no_grad():
        sa, lat = enc["stage_a"].encode(imgs)[0], enc["effnet"](imgs)
    root = S.create_store(path, [S.GroupLayout("", n, tuple(lat.shape[1:]), tuple(sa.shape[1:]))], chunk_rows=n,
                          dtype="float16", attrs={})
    grp = S.sample_group(root, "")
    for name, v in (("latents", lat), ("stage_a", sa)):
        S.writable(grp[name])[:] = v.numpy().astype(np.float16)
    grp["status"][:] = np.full(n, S.STATUS_OK, np.uint8)
    S.finalize_store(path)


def _encoders(device):
    from cascadekit.codec.models.effnet import EfficientNetEncoder
    from cascadekit.codec.models.stage_a import StageA, StageAConfig

    torch.manual_seed(0)
    return {"stage_a": StageA.from_config(StageAConfig.preset("official")).eval().to(device),
            "effnet": EfficientNetEncoder().eval().to(device)}


class _Images:
    """In-memory images as training data (the `fly` mode): groups shaped like the Stage A latents."""

    def __init__(self, imgs: torch.Tensor, stage_a_shape):
        from cascadekit.generator.batches import Group

        self.imgs, self.fields, self.empty, self.field_shapes = imgs, {"images"}, None, {}
        self.groups = [Group("root", len(imgs), tuple(stage_a_shape))]
        self.effnet_shape, self.scales = {"root": (16, 1, 1)}, {"root": None}

    def read(self, group, idx):
        return {"images": self.imgs[list(idx)]}


def _fly_task(base, enc, device):
    """The Stage B task with x0 and effnet computed from images (official get_conditions / encode_latents)."""
    from cascadekit.codec.images import imagenet_normalize

    class Fly(type(base)):
        def _shape_problems(self, data):
            return []

        def inputs(self, batch, draws, dev):
            x = batch["images"].to(device)
            f = float(np.random.uniform(0.5, 1))
            h = int(x.shape[-2] * f // 32 * 32)
            with torch.no_grad():
                x0 = enc["stage_a"].encode(x)[0].float()
                small = torch.nn.functional.interpolate(x, size=(h, h), mode="nearest")
                eff = enc["effnet"](imagenet_normalize(small)).float()
            keep = (~draws["drop_effnet"]).to(device)[:, None, None, None].float()
            return x0, {"effnet": eff * keep, "clip": self._clip(batch, draws["drop_caption"], dev)}

    t = Fly(base.cfg, empty_pooled=base.empty, model_overrides=base.model_overrides, log=lambda m: None)
    return t


def worker(args) -> dict:  # ~50 lines: both modes set up side by side, then interleaved
    from cascadekit.generator.stage_b_data import StageBData
    from cascadekit.generator.tasks.stage_b import StageBTask
    from cascadekit.generator.tasks.stage_b_config import StageBTrainConfig
    from cascadekit.generator.training.loop import TrainingLoop

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp())
    store = Path(args.store) if args.store else tmp / "s.zarr"
    enc = _encoders(device) if args.mode != "store" or not args.store else None  # the store mode needs none
    if not args.store:
        _store(store, args.batch * 4, args.resolution, {k: v.cpu() for k, v in enc.items()})
    cfg = StageBTrainConfig.from_dict(dict(model="lite", batch_size=args.batch, steps=10**6, save_every=10**6,
                                           log_every=10**6, caption_dropout=0.0))
    empty = torch.zeros(1, 1, 1280)
    loops = {}
    if args.mode in ("store", "both"):
        task = StageBTask(cfg, empty_pooled=empty, model_overrides=SMALL_LITE, log=lambda m: None)
        loops["store"] = TrainingLoop(task, StageBData(store), cfg, tmp / "run_store", device=device,
                                      log=lambda m: None)
    if args.mode in ("fly", "both"):
        base = StageBTask(cfg, empty_pooled=empty, model_overrides=SMALL_LITE, log=lambda m: None)
        sa_shape = (4, args.resolution // 4, args.resolution // 4)
        imgs = torch.rand(args.batch * 4, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0))
        loops["fly"] = TrainingLoop(_fly_task(base, enc, device), _Images(imgs, sa_shape), cfg, tmp / "run_fly",
                                    device=device, log=lambda m: None)
    times = {m: [] for m in loops}
    setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # imports, models, optimizer built
    for i in range(args.steps):
        for m, loop in loops.items():
            t0 = time.perf_counter()
            loop.train_step()
            times[m].append(time.perf_counter() - t0)
    out = {m: {"fastest_step_s": min(v[1:] or v), "samples_per_s": args.batch / min(v[1:] or v), "steps_s": v}
           for m, v in times.items()}
    params = sum(p.numel() for p in next(iter(loops.values())).model.parameters())
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    for loop in loops.values():
        loop.close()
    return {"modes": out, "stage_b_params": params, "peak_memory_bytes": peak,
            "peak_rss_growth_in_steps_bytes": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - setup_rss
                                               if device.type != "cuda" else None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default="both", choices=["both", "store", "fly"])
    ap.add_argument("--store", default=None, help="an existing benchmark store (the subprocesses of one run)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "bench_stage_b_train.json"))
    args = ap.parse_args()
    if args.mode != "both":
        print(json.dumps(worker(args)))
        return
    tmp = Path(tempfile.mkdtemp())
    _store(tmp / "s.zarr", args.batch * 4, args.resolution, _encoders(torch.device("cpu")))
    args.store = str(tmp / "s.zarr")
    res = worker(args)
    peaks = {}
    for m in ("store", "fly"):  # each mode alone in a fresh process: its own peak memory
        cmd = [sys.executable, __file__, "--mode", m, "--steps", "2", "--resolution", str(args.resolution),
               "--batch", str(args.batch), "--threads", str(args.threads), "--device", args.device,
               "--store", args.store]
        one = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        peaks[m] = {"peak": one["peak_memory_bytes"], "growth_in_steps": one["peak_rss_growth_in_steps_bytes"]}
    s, f = res["modes"]["store"], res["modes"]["fly"]
    res.update(args=vars(args), peak_memory_bytes_per_mode=peaks, speedup=s["samples_per_s"] / f["samples_per_s"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(f"Stage B ({res['stage_b_params'] / 1e6:.1f}M params), {args.resolution}px, batch {args.batch}: "
          f"store {s['samples_per_s']:.3f} samples/s, on the fly {f['samples_per_s']:.3f} samples/s, "
          f"ratio {res['speedup']:.2f}x; peak memory store {peaks['store']['peak'] / 2**30:.2f} GiB, "
          f"fly {peaks['fly']['peak'] / 2**30:.2f} GiB (CPU: RSS growth during the steps store "
          f"{(peaks['store']['growth_in_steps'] or 0) / 2**20:.0f} MiB, fly {(peaks['fly']['growth_in_steps'] or 0) / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
