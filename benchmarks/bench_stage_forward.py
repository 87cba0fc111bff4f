"""Forward time of our Stage B / Stage C vs diffusers' ``StableCascadeUNet`` on identical weights.

Both networks get the same random weights (ours -> official keys -> diffusers keys through
``cascadekit.codec.weights.keys.official_to_diffusers``), the outputs are checked to agree, then each
forward is timed (warm-up, then the median of ``--repeats`` runs, ours and diffusers interleaved so
that machine noise hits both alike; wall median, wall minimum and CPU-time median are reported).

The forward's FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (with a formula for the CPU
flash-attention kernel, which the counter does not know); a 1024² sgemm is timed in the same loop, so
the FLOP rate is reported against the matmul rate of the same thread count under the same load.
``--threads 1,2`` repeats everything per thread count. Without diffusers installed only our side runs.
``--module-path`` also times our blocks' module-by-module path (grad enabled, weights frozen: what
training runs, without the fused inference kernels of ``codec.models.fused``) in the same loop.

    python benchmarks/bench_stage_forward.py --threads 1,2 --out out/bench_stage_forward.json
    python benchmarks/bench_stage_forward.py --device cuda --dtype bf16 --size lite --compile

Sizes: ``mid`` (default; CPU-friendly mid-size configs) and ``lite`` (the released lite configs at the
standard 1024² shapes; needs a GPU or a lot of patience).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from cascadekit.codec.models import StageB, StageBConfig
from cascadekit.codec.weights.keys import official_to_diffusers
from cascadekit.generator import StageC, StageCConfig

BLOCK_NAMES = {"C": "SDCascadeResBlock", "T": "SDCascadeTimestepBlock", "A": "SDCascadeAttnBlock"}


def mid_configs() -> dict:
    b = StageBConfig(
        c_hidden=[64, 128, 256, 256], nhead=[-1, -1, 4, 4], c_cond=256, blocks=[[1, 2, 4, 2], [2, 4, 2, 1]],
        block_repeat=[[1, 1, 1, 1], [2, 2, 2, 2]],
    )
    c = StageCConfig(c_cond=512, c_hidden=[512, 512], nhead=[8, 8], blocks=[[2, 4], [4, 2]])
    return {"b": b, "c": c}


def tiny_configs() -> dict:
    return {"b": StageBConfig.preset("tiny"), "c": StageCConfig.preset("tiny")}


def lite_configs() -> dict:
    return {"b": StageBConfig.preset("lite"), "c": StageCConfig.preset("lite")}


def diffusers_config(cfg) -> dict:
    """The ``StableCascadeUNet`` config equivalent to an official Stage B / Stage C config."""
    is_b = isinstance(cfg, StageBConfig)
    return dict(
        in_channels=cfg.c_in, out_channels=cfg.c_out, timestep_ratio_embedding_dim=cfg.c_r,
        patch_size=cfg.patch_size, conditioning_dim=cfg.c_cond, block_out_channels=list(cfg.c_hidden),
        num_attention_heads=[max(h, 0) for h in cfg.nhead],
        down_num_layers_per_block=list(cfg.blocks[0]), up_num_layers_per_block=list(cfg.blocks[1]),
        down_blocks_repeat_mappers=list(cfg.block_repeat[0]), up_blocks_repeat_mappers=list(cfg.block_repeat[1]),
        block_types_per_layer=[[BLOCK_NAMES[k] for k in level] for level in cfg.level_config],
        clip_text_in_channels=None if is_b else cfg.c_clip_text,
        clip_text_pooled_in_channels=cfg.c_clip if is_b else cfg.c_clip_text_pooled,
        clip_image_in_channels=None if is_b else cfg.c_clip_img,
        clip_seq=cfg.c_clip_seq, effnet_in_channels=cfg.c_effnet if is_b else None,
        pixel_mapper_in_channels=cfg.c_pixels if is_b else None, kernel_size=cfg.kernel_size,
        dropout=list(cfg.dropout), self_attn=cfg.self_attn, timestep_conditioning_type=list(cfg.t_conds),
        switch_level=None if is_b else list(cfg.switch_level),
    )


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (the official init zeroes the output conv, which would make outputs zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(fan_in) if p.dim() > 1 else 0.2))


def make_inputs(stage: str, cfg, batch: int, size: str, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(batch, generator=g)
    if stage == "b":
        hw = 256 if size == "lite" else 128  # Stage A latent of a 1024² (512²) image
        return dict(x=torch.randn(batch, cfg.c_in, hw, hw, generator=g), r=r,
                    effnet=torch.randn(batch, cfg.c_effnet, 24, 24, generator=g),
                    clip=torch.randn(batch, 1, cfg.c_clip, generator=g))
    return dict(x=torch.randn(batch, cfg.c_in, 24, 24, generator=g), r=r,
                clip_text=torch.randn(batch, 77, cfg.c_clip_text, generator=g),
                clip_text_pooled=torch.randn(batch, 1, cfg.c_clip_text_pooled, generator=g),
                clip_img=torch.randn(batch, 1, cfg.c_clip_img, generator=g))


def have_diffusers() -> bool:
    try:
        import diffusers  # noqa: F401  (optional: the GPU images may not carry it)
    except Exception:  # not installed, or a release that does not import with this torch (AttributeError on 2.4)
        return False
    return True


def build_pair(stage: str, cfg, device, dtype, with_diffusers: bool = True):
    """(ours, diffusers' StableCascadeUNet or None), identical weights, eval mode, on device/dtype."""
    ours = (StageB if stage == "b" else StageC).from_config(cfg)
    randomize_(ours)
    ours = ours.to(device, dtype).eval().requires_grad_(False)
    if not with_diffusers:
        return ours, None
    from diffusers import StableCascadeUNet

    theirs = StableCascadeUNet(**diffusers_config(cfg))
    converted = official_to_diffusers(ours.state_dict(), "stage_b" if stage == "b" else "stage_c")
    theirs.load_state_dict({k: v.contiguous() for k, v in converted.items()}, strict=True)
    return ours, theirs.to(device, dtype).eval().requires_grad_(False)


def forward_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (2 per multiply-add), attention included on every backend.

    Counted with grad enabled (the weights are frozen, so nothing is recorded): that runs the blocks'
    module-by-module path, whose matmuls are all visible to the counter. The fused inference path that is
    timed does the same multiply-adds, partly as in-place ``baddbmm_`` / ``addmm_``, which the counter
    does not see.
    """
    mapping = {op: _attention_flops for op in _sdpa_ops()}
    with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def _attention_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """Q@K^T and weights@V: 2 * B*h*Nq*Nkv*(d_qk + d_v) (the counter passes shapes for tensors)."""
    b, h, nq, d = q_shape
    return 2 * b * h * nq * k_shape[-2] * (d + v_shape[-1])


def _sdpa_ops() -> list:
    """The fused attention kernels FlopCounterMode has no formula for (the CPU one; absent on old torch)."""
    names = ["_scaled_dot_product_flash_attention_for_cpu"]
    return [getattr(torch.ops.aten, n) for n in names if hasattr(torch.ops.aten, n)]


def sgemm_fn(device, dtype, n: int = 1024):
    """(call, flops) of an n×n @ n×n matmul in ``dtype`` on ``device``: the machine's matmul rate."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    return (lambda: a @ b), 2 * n**3


def call_ours(model, stage, inp):
    if stage == "b":
        return model(inp["x"], inp["r"], inp["effnet"], inp["clip"])
    return model(inp["x"], inp["r"], inp["clip_text"], inp["clip_text_pooled"], inp["clip_img"])


def call_theirs(model, stage, inp):
    if stage == "b":
        return model(inp["x"], inp["r"], clip_text_pooled=inp["clip"], effnet=inp["effnet"], return_dict=False)[0]
    return model(inp["x"], inp["r"], clip_text_pooled=inp["clip_text_pooled"], clip_text=inp["clip_text"],
                 clip_img=inp["clip_img"], return_dict=False)[0]


def _with_grad(fn):
    with torch.enable_grad():
        return fn()


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call. CPU time is far less sensitive than wall time
    to other processes competing for the cores (on a shared machine wall times can vary 3x)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def bench_stage(stage, cfg, args, device, dtype) -> dict:
    """Check our output against diffusers', then time ours / diffusers / sgemm interleaved."""
    ours, theirs = build_pair(stage, cfg, device, dtype, with_diffusers=not args.no_diffusers)
    inp = {k: v.to(device) for k, v in make_inputs(stage, cfg, args.batch, args.size).items()}
    inp_t = {k: (v.to(dtype) if k != "r" else v) for k, v in inp.items()}  # diffusers does not cast inputs
    flops = forward_flops(lambda: call_ours(ours, stage, inp))
    if args.compile:
        ours = torch.compile(ours, backend=args.compile_backend)
        theirs = torch.compile(theirs, backend=args.compile_backend) if theirs is not None else None
    sgemm, sgemm_flops = sgemm_fn(device, dtype)
    fns = {"ours": lambda: call_ours(ours, stage, inp), "sgemm": sgemm}
    if args.module_path:  # grad enabled, weights frozen: the blocks' module-by-module path (what training runs)
        fns["module_path"] = lambda: _with_grad(lambda: call_ours(ours, stage, inp))
    rel = max_abs = None
    with torch.inference_mode():
        if theirs is not None:
            fns["diffusers"] = lambda: call_theirs(theirs, stage, inp_t)
            a, b = fns["ours"]().float(), fns["diffusers"]().float()
            rel, max_abs = ((a - b).norm() / b.norm()).item(), (a - b).abs().max().item()
            tol = 1e-4 if dtype == torch.float32 else 3e-2
            if not rel < tol:
                raise SystemExit(f"stage {stage}: outputs differ (relative L2 {rel:.3g} >= {tol})")
        for _ in range(args.warmup):
            for fn in fns.values():
                fn()
        times = {k: [] for k in fns}
        names = list(fns)
        for i in range(args.repeats):  # interleaved, the order rotated each repeat (A/sgemm/B, sgemm/B/A, ...)
            for k in names[i % len(names):] + names[:i % len(names)]:
                times[k].append(timed(fns[k], device))
    return _summary(stage, cfg, ours, inp, flops, sgemm_flops, times, rel, max_abs)


def _summary(stage, cfg, ours, inp, flops, sgemm_flops, times, rel, max_abs) -> dict:
    wall = {k: [t[0] for t in v] for k, v in times.items()}
    cpu = {k: [t[1] for t in v] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    sgemm_rate = sgemm_flops / med["sgemm"]
    out = {
        "stage": stage, "config": cfg.kwargs(),
        "params": sum(p.numel() for p in ours.parameters()),
        "inputs": {k: list(v.shape) for k, v in inp.items()},
        "output_rel_l2_diff": rel, "output_max_abs_diff": max_abs,
        "forward_gflop": flops / 1e9, "ours_median_s": med["ours"], "ours_min_s": min(wall["ours"]),
        "ours_cpu_median_s": statistics.median(cpu["ours"]), "ours_all_s": wall["ours"],
        "ours_gflops_per_s": flops / med["ours"] / 1e9, "sgemm_gflops_per_s": sgemm_rate / 1e9,
        "flop_rate_over_sgemm": flops / med["ours"] / sgemm_rate, "sgemm_all_s": wall["sgemm"],
        # the same ratio in CPU time (process CPU seconds per call; threads summed, so per thread count)
        "flop_rate_over_sgemm_cpu": med_cpu["sgemm"] / sgemm_flops * flops / med_cpu["ours"],
    }
    if "module_path" in med:
        out.update({"module_path_median_s": med["module_path"], "module_path_cpu_median_s": med_cpu["module_path"],
                    "ratio_fused_over_module_cpu": med_cpu["ours"] / med_cpu["module_path"]})
    if "diffusers" in med:
        out.update({
            "diffusers_median_s": med["diffusers"], "ratio_ours_over_diffusers": med["ours"] / med["diffusers"],
            "diffusers_min_s": min(wall["diffusers"]), "ratio_min": min(wall["ours"]) / min(wall["diffusers"]),
            "diffusers_cpu_median_s": statistics.median(cpu["diffusers"]),
            "ratio_cpu": statistics.median(cpu["ours"]) / statistics.median(cpu["diffusers"]),
            "diffusers_all_s": wall["diffusers"],
        })
    return out


def print_table(results: list[dict]) -> None:
    print("times in ms; ratio = ours / diffusers (median wall, min wall, median CPU time); "
          "rate = forward GFLOP/s, / sgemm = that over the 1024² sgemm rate measured in the same loop "
          "(wall medians; /sg cpu: the same from CPU-time medians)")
    print(f"{'stage':<9}{'thr':>4}{'params':>12}{'GFLOP':>7}{'ours':>8}{'diffusers':>10}{'ratio':>7}{'min':>7}"
          f"{'cpu':>7}{'rate':>7}{'sgemm':>7}{'/sgemm':>7}{'/sg cpu':>8}{'max|diff|':>10}")
    for r in results:
        d = r.get("diffusers_median_s")
        na = f"{'-':>7}"
        print(f"{'Stage ' + r['stage'].upper():<9}{r['threads']:>4}{r['params']:>12,}{r['forward_gflop']:>7.1f}"
              f"{r['ours_median_s'] * 1e3:>8.0f}" + (f"{d * 1e3:>10.0f}" if d else f"{'-':>10}")
              + (f"{r['ratio_ours_over_diffusers']:>7.3f}{r['ratio_min']:>7.3f}{r['ratio_cpu']:>7.3f}" if d else na * 3)
              + f"{r['ours_gflops_per_s']:>7.1f}{r['sgemm_gflops_per_s']:>7.1f}{r['flop_rate_over_sgemm']:>7.3f}"
              + f"{r['flop_rate_over_sgemm_cpu']:>8.3f}"
              + (f"{r['output_max_abs_diff']:>10.2e}" if d else f"{'-':>10}"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["b", "c", "both"], default="both")
    p.add_argument("--size", choices=["mid", "lite", "tiny"], default="mid", help="tiny: the test presets (checks only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", default=None, help="torch CPU thread counts, comma-separated (e.g. 1,2)")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks before timing")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: dynamo only)")
    p.add_argument("--no-diffusers", action="store_true", help="time our networks only")
    p.add_argument("--module-path", action="store_true",
                   help="also time our blocks' module-by-module path (no fused inference kernels) in the same loop")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    args.no_diffusers = args.no_diffusers or not have_diffusers()

    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    configs = {"mid": mid_configs, "lite": lite_configs, "tiny": tiny_configs}[args.size]()
    stages = ["b", "c"] if args.stage == "both" else [args.stage]
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]

    load_before = os.getloadavg()
    results = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for s in stages:
            results.append({"threads": threads, **bench_stage(s, configs[s], args, device, dtype)})

    versions = {"torch": torch.__version__}
    if not args.no_diffusers:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    print(f"device {device} ({platform.processor() or platform.machine()}), {dtype_name}, batch {args.batch}, "
          f"size {args.size}, compile {args.compile}, " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print_table(results)
    for r in results:
        if "module_path_median_s" in r:
            print(f"Stage {r['stage'].upper()}, {r['threads']} thread(s): fused / module path (median CPU time) "
                  f"{r['ratio_fused_over_module_cpu']:.3f} ({r['ours_cpu_median_s'] * 1e3:.0f} / "
                  f"{r['module_path_cpu_median_s'] * 1e3:.0f} ms)")
    load_after = os.getloadavg()
    print(f"load average (1/5/15 min) before {' '.join(f'{v:.1f}' for v in load_before)}, "
          f"after {' '.join(f'{v:.1f}' for v in load_after)} on {os.cpu_count()} CPUs")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": str(device), "dtype": dtype_name, "batch": args.batch, "size": args.size,
                "threads": thread_counts, "compile": args.compile, "warmup": args.warmup,
                "repeats": args.repeats, "load_average_before": list(load_before),
                "load_average": list(load_after), "cpu_count": os.cpu_count(), **versions}
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
