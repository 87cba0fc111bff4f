"""Stage C training throughput: precomputed latents (a Zarr latent store) vs encoding images on the fly.

Both modes run the SAME Stage C training step (GDF epsilon objective + P2 weight, AdamW, grad clip 1.0,
bf16 autocast on CUDA); they differ only in where the (B,16,h,w) latents come from:

* ``latents``: read from a latent store through the training data path (:mod:`cascadekit.generator.data`
  + :class:`~cascadekit.generator.batches.BatchPlan`), text embeddings stored too;
* ``images``: images (B,3,R,R) already decoded in memory go through the EfficientNetV2-S encoder
  (the real architecture, random weights, ImageNet normalisation) every step, as the official
  ``train_c.py`` does (it also runs the CLIP text encoder every step; that is NOT included here, so
  the measured ratio is a lower bound of the saving).

Timing: the steps of both modes are interleaved in one process (so load from other processes hits
both alike) and the fastest step of each is reported, plus the split of a step (medians): data (latents
+ noising), forward+backward, optimizer (clip + AdamW + zero_grad) and (data + optimizer) / (forward+backward). Peak memory (CUDA: max allocated; CPU: peak
RSS) comes from a separate run of each mode in its own subprocess. Prints a table and writes JSON (default ``benchmarks/results/bench_train.json``).

    python benchmarks/bench_train.py --model tiny --resolution 256 --batch 4 --steps 6
    python benchmarks/bench_train.py --model lite --resolution 768 --batch 8 --device cuda   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# a mid-size Stage C for CPU runs (same layout as lite: 2 levels of CTA, 16 -> 16 channels)
SMALL = dict(c_cond=256, c_hidden=[256, 256], nhead=[4, 4], blocks=[[2, 4], [4, 2]], c_clip_text=1280,
             c_clip_text_pooled=1280, c_clip_img=768)


def stage_c(model: str):
    from cascadekit.generator.stage_c import StageC, StageCConfig

    if model == "small":
        import dataclasses

        return StageC.from_config(dataclasses.replace(StageCConfig.preset("lite"), **SMALL))
    return StageC.from_config(StageCConfig.preset(model))


@dataclass
class _Ctx:
    """One benchmark process: device, GDF, batch size, the Stage C's conditioning widths, autocast."""

    args: argparse.Namespace
    dev: torch.device
    gdf: object
    B: int
    c_txt: int
    c_pool: int
    c_img: int
    auto: object

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()


def _latents_source(ctx: _Ctx):
    """Batches read from the latent store through the training data path."""
    from cascadekit.generator.batches import BatchPlan
    from cascadekit.generator.data import open_store

    data = open_store(ctx.args.store)
    plan = BatchPlan(data.groups, ctx.B, seed=0)

    def get_batch(i):
        g, idx, _ = plan.batch(i)
        b = data.read(g.name, idx)
        return b["latents"].to(ctx.dev), b["clip_text"].to(ctx.dev), b["clip_text_pooled"].to(ctx.dev)

    return get_batch


def _images_source(ctx: _Ctx):
    """Latents encoded every step by the EfficientNetV2-S encoder from in-memory images."""
    from cascadekit.codec.images import imagenet_normalize
    from cascadekit.codec.models.effnet import EfficientNetEncoder, EfficientNetEncoderConfig

    effnet = EfficientNetEncoder.from_config(EfficientNetEncoderConfig.preset("official")).to(ctx.dev).eval()
    if ctx.dev.type == "cuda":
        effnet = effnet.to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(ctx.B, 3, ctx.args.resolution, ctx.args.resolution, generator=gen).to(ctx.dev)
    txt = torch.randn(ctx.B, 77, ctx.c_txt, generator=gen).to(ctx.dev)
    pool = torch.randn(ctx.B, 1, ctx.c_pool, generator=gen).to(ctx.dev)

    def get_batch(i):
        with torch.no_grad():
            z = effnet(imagenet_normalize(images).to(next(effnet.parameters()).dtype)).float()
        return z, txt, pool

    return get_batch


def _step(ctx: _Ctx, runner, i: int) -> tuple[float, float, float]:
    """One training step; returns seconds (data: latents + noising, forward+backward, optimizer:
    clip + AdamW + zero_grad)."""
    import torch.nn.functional as F

    model, opt, get_batch = runner
    B, dev = ctx.B, ctx.dev
    t0 = time.perf_counter()
    x0, txt, pool = get_batch(i)
    d = ctx.gdf.diffuse(x0, generator=torch.Generator().manual_seed(i))
    ctx.sync()
    t1 = time.perf_counter()
    with ctx.auto:
        pred = model(d.x_t, d.noise_cond.to(dev), txt.float(), pool.float().reshape(B, 1, -1),
                     torch.zeros(B, 1, ctx.c_img, device=dev))
    loss = (F.mse_loss(pred.float(), d.target, reduction="none").mean((1, 2, 3)) * d.loss_weight.to(dev)).mean()
    loss.backward()
    ctx.sync()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    ctx.sync()
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def _mode_result(ts: list[tuple[float, float, float]], B: int) -> dict:
    """Fastest step (robust to other processes competing for a shared machine) and the medians' split."""
    total = [sum(t) for t in ts]
    med = [statistics.median(t[k] for t in ts) for k in range(3)]
    return {"samples_per_s": B / min(total), "samples_per_s_mean": B * len(total) / sum(total),
            "step_s": min(total), "latents_s": min(t[0] for t in ts), "update_s": min(t[1] + t[2] for t in ts),
            "data_median_s": med[0], "fwd_bwd_median_s": med[1], "optim_median_s": med[2],
            "overhead_over_fwd_bwd": (med[0] + med[2]) / med[1]}


def worker(args) -> dict:
    """Run mode ``latents``, ``images`` (isolated: per-mode peak memory) or ``both`` (steps interleaved
    latents/images in one process, so that load from other processes hits both alike: the timing)."""
    import copy

    from cascadekit.codec.diffusion.gdf import GDF
    from cascadekit.generator.config import TrainConfig
    from cascadekit.generator.training.optim import make_optimizer

    torch.manual_seed(0)
    dev = torch.device(args.device)
    base = stage_c(args.model).to(dev).train()
    base.gradient_checkpointing = args.grad_ckpt
    auto = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    ctx = _Ctx(args, dev, GDF(), args.batch, base.clip_txt_mapper.in_features,
               base.clip_txt_pooled_mapper.in_features, base.clip_img_mapper.in_features, auto)
    modes = ["latents", "images"] if args.mode == "both" else [args.mode]
    sources = {"latents": _latents_source, "images": _images_source}
    runners = {}
    for mode in modes:
        model = base if len(modes) == 1 else copy.deepcopy(base)
        runners[mode] = (model, make_optimizer(model.parameters(), TrainConfig())[0], sources[mode](ctx))  # the trainer's AdamW
    for i in range(args.warmup):
        for mode in modes:
            _step(ctx, runners[mode], i)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = {m: [] for m in modes}
    for i in range(args.steps):
        for mode in modes:
            times[mode].append(_step(ctx, runners[mode], args.warmup + i))
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"modes": {mode: _mode_result(ts, args.batch) for mode, ts in times.items()}, "peak_memory_gib": peak / 2**30,
            "peak_memory_kind": "cuda max allocated" if dev.type == "cuda" else "process peak RSS",
            "stage_c_params_m": sum(p.numel() for p in base.parameters()) / 1e6}


def make_store(path: Path, n: int, h: int, c_txt: int, c_pool: int) -> None:
    """A latent store with random latents + text embeddings, written through the datasets store API."""
    import numpy as np

    from cascadekit.datasets import store as S

    g = torch.Generator().manual_seed(0)
    root = S.create_store(path, [S.GroupLayout("", n, (16, h, h))], chunk_rows=min(n, 64), dtype="float16", attrs={})
    grp = S.sample_group(root, "")
    grp["latents"][:] = torch.randn(n, 16, h, h, generator=g).numpy().astype(np.float16)
    grp["captions"][:] = np.asarray([f"caption {i}" for i in range(n)]).astype(str)
    grp["status"][:] = np.ones(n, np.uint8)
    for name, shape in (("clip_text", (77, c_txt)), ("clip_text_pooled", (1, c_pool))):
        grp.create_array(name, shape=(n, *shape), chunks=(min(n, 64), *shape), dtype="float16", fill_value=0)
        grp[name][:] = (torch.randn(n, *shape, generator=g) * 0.5).numpy().astype(np.float16)
    grp.create_array("text_status", shape=(n,), chunks=(min(n, 64),), dtype="uint8", fill_value=0)
    grp["text_status"][:] = np.ones(n, np.uint8)
    S.finalize_store(path)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small", choices=["tiny", "small", "lite", "big"])
    ap.add_argument("--resolution", type=int, default=256, help="image side; latents are resolution/32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "bench_train.json"))
    ap.add_argument("--mode", choices=["latents", "images", "both"], help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    return ap


def _run_child(args, store: Path, mode: str) -> dict:
    """``worker`` for ``mode`` in a fresh process (its own peak memory); its RESULT line parsed."""
    cmd = [sys.executable, __file__, "--mode", mode, "--store", str(store), "--model", args.model,
           "--resolution", str(args.resolution), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", args.device]
    cmd += (["--threads", str(args.threads)] if args.threads else []) + (["--grad-ckpt"] if args.grad_ckpt else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not line:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"benchmark mode {mode} failed")
    return json.loads(line[0][7:])


def _measure(args) -> tuple[dict, dict]:
    """(timing run of both modes interleaved, {mode: isolated run}) on a temporary latent store."""
    with tempfile.TemporaryDirectory() as tmp:
        m = stage_c(args.model) if args.model in ("tiny", "small") else None
        c_txt = m.clip_txt_mapper.in_features if m is not None else 1280
        c_pool = m.clip_txt_pooled_mapper.in_features if m is not None else 1280
        del m
        store = Path(tmp) / "bench.zarr"
        make_store(store, max(64, args.batch * (args.steps + args.warmup)), args.resolution // 32, c_txt, c_pool)
        timing = _run_child(args, store, "both")
        memory = {m: _run_child(args, store, m) for m in ("latents", "images")}
    return timing, memory


def _report(args, timing: dict, memory: dict) -> dict:
    lat, img = timing["modes"]["latents"], timing["modes"]["images"]
    for m, r in (("latents", lat), ("images", img)):
        r["mode"] = m
        r["peak_memory_gib"] = memory[m]["peak_memory_gib"]
        r["isolated_samples_per_s"] = memory[m]["modes"][m]["samples_per_s"]
    return {
        "config": {k: getattr(args, k) for k in ("model", "resolution", "batch", "steps", "warmup", "device", "threads", "grad_ckpt")},
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "stage_c_params_m": timing["stage_c_params_m"],
        "timing": "steps of both modes interleaved in one process; fastest step of each mode",
        "results": [lat, img],
        "speedup_latents_vs_images": lat["samples_per_s"] / img["samples_per_s"],
        "peak_memory_kind": timing["peak_memory_kind"] + " (each mode in its own process)",
    }


def _print_report(args, report: dict) -> None:
    lat, img = report["results"]
    print(f"\nStage C training, model={args.model} ({report['stage_c_params_m']:.1f}M params), "
          f"images {args.resolution}px -> latents {args.resolution // 32}x{args.resolution // 32}, batch {args.batch}, "
          f"{report['device_name']}")
    print(f"{'source':<28}{'samples/s':>11}{'s/step':>9}{'latents s':>11}{'update s':>10}{'peak mem GiB':>14}")
    for r, name in ((lat, "precomputed latents (store)"), (img, "images + effnet on the fly")):
        print(f"{name:<28}{r['samples_per_s']:>11.2f}{r['step_s']:>9.3f}{r['latents_s']:>11.3f}{r['update_s']:>10.3f}"
              f"{r['peak_memory_gib']:>14.2f}")
    print("(fastest step of each mode, modes interleaved; 'latents s' = store read or effnet encode, "
          "'update s' = Stage C step)")
    print(f"\nstep split (medians): {'data s':>9}{'fwd+bwd s':>11}{'optim s':>9}{'(data+optim)/(fwd+bwd)':>25}")
    for r, name in ((lat, "precomputed latents"), (img, "images + effnet")):
        print(f"{name:<21}{r['data_median_s']:>9.4f}{r['fwd_bwd_median_s']:>11.4f}{r['optim_median_s']:>9.4f}"
              f"{r['overhead_over_fwd_bwd']:>24.1%}")
    print(f"speed-up of precomputed latents: {report['speedup_latents_vs_images']:.2f}x "
          f"(peak memory: {report['peak_memory_kind']})")


def main():
    args = _parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode:  # child
        print("RESULT " + json.dumps(worker(args)))
        return
    report = _report(args, *_measure(args))
    _print_report(args, report)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
