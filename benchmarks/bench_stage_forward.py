"""Forward time of our Stage B / Stage C vs diffusers' ``StableCascadeUNet`` on identical weights.

Both networks get the same random weights (ours -> official keys -> diffusers keys through
``cascadekit.codec.weights.keys.official_to_diffusers``), the outputs are checked to agree, then each
forward is timed (warm-up, then the median of ``--repeats`` runs, ours and diffusers interleaved so
that machine noise hits both alike; wall median, wall minimum and CPU-time median are reported).

    python benchmarks/bench_stage_forward.py --out out/bench_stage_forward.json
    python benchmarks/bench_stage_forward.py --device cuda --dtype bf16 --size mid

Sizes: ``mid`` (default; CPU-friendly mid-size configs) and ``lite`` (the released lite configs at the
standard 1024² shapes; needs a GPU or a lot of patience).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

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


def build_pair(stage: str, cfg, device, dtype):
    from diffusers import StableCascadeUNet

    ours = (StageB if stage == "b" else StageC).from_config(cfg)
    randomize_(ours)
    theirs = StableCascadeUNet(**diffusers_config(cfg))
    converted = official_to_diffusers(ours.state_dict(), "stage_b" if stage == "b" else "stage_c")
    theirs.load_state_dict({k: v.contiguous() for k, v in converted.items()}, strict=True)
    return ours.to(device, dtype).eval(), theirs.to(device, dtype).eval()


def call_ours(model, stage, inp):
    if stage == "b":
        return model(inp["x"], inp["r"], inp["effnet"], inp["clip"])
    return model(inp["x"], inp["r"], inp["clip_text"], inp["clip_text_pooled"], inp["clip_img"])


def call_theirs(model, stage, inp):
    if stage == "b":
        return model(inp["x"], inp["r"], clip_text_pooled=inp["clip"], effnet=inp["effnet"], return_dict=False)[0]
    return model(inp["x"], inp["r"], clip_text_pooled=inp["clip_text_pooled"], clip_text=inp["clip_text"],
                 clip_img=inp["clip_img"], return_dict=False)[0]


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
    ours, theirs = build_pair(stage, cfg, device, dtype)
    inp = {k: v.to(device) for k, v in make_inputs(stage, cfg, args.batch, args.size).items()}
    inp_t = {k: (v.to(dtype) if k != "r" else v) for k, v in inp.items()}  # diffusers does not cast inputs
    with torch.inference_mode():
        a = call_ours(ours, stage, inp).float()
        b = call_theirs(theirs, stage, inp_t).float()
        rel = ((a - b).norm() / b.norm()).item()
        max_abs = (a - b).abs().max().item()
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        if not rel < tol:
            raise SystemExit(f"stage {stage}: outputs differ (relative L2 {rel:.3g} >= {tol})")
        for _ in range(args.warmup):
            call_ours(ours, stage, inp)
            call_theirs(theirs, stage, inp_t)
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):
            t_ours.append(timed(lambda: call_ours(ours, stage, inp), device))
            t_theirs.append(timed(lambda: call_theirs(theirs, stage, inp_t), device))
    wall_o, cpu_o = zip(*t_ours)
    wall_t, cpu_t = zip(*t_theirs)
    mo, mt = statistics.median(wall_o), statistics.median(wall_t)
    return {
        "stage": stage, "config": cfg.kwargs(),
        "params": sum(p.numel() for p in ours.parameters()),
        "inputs": {k: list(v.shape) for k, v in inp.items()},
        "output_rel_l2_diff": rel, "output_max_abs_diff": max_abs,
        "ours_median_s": mo, "diffusers_median_s": mt, "ratio_ours_over_diffusers": mo / mt,
        "ours_min_s": min(wall_o), "diffusers_min_s": min(wall_t), "ratio_min": min(wall_o) / min(wall_t),
        "ours_cpu_median_s": statistics.median(cpu_o), "diffusers_cpu_median_s": statistics.median(cpu_t),
        "ratio_cpu": statistics.median(cpu_o) / statistics.median(cpu_t),
        "ours_all_s": list(wall_o), "diffusers_all_s": list(wall_t),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["b", "c", "both"], default="both")
    p.add_argument("--size", choices=["mid", "lite"], default="mid")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    configs = mid_configs() if args.size == "mid" else lite_configs()
    stages = ["b", "c"] if args.stage == "both" else [args.stage]

    results = [bench_stage(s, configs[s], args, device, dtype) for s in stages]

    import diffusers

    print(f"device {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"{dtype_name}, batch {args.batch}, size {args.size}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    print("times in ms; ratio = ours / diffusers (median wall, min wall, median CPU time)")
    print(f"{'stage':<9}{'params':>12}{'ours':>9}{'diffusers':>11}{'ratio':>7}{'min ours':>10}{'min diff.':>11}"
          f"{'ratio':>7}{'cpu ratio':>10}{'max|diff|':>11}")
    for r in results:
        print(f"{'Stage ' + r['stage'].upper():<9}{r['params']:>12,}{r['ours_median_s'] * 1e3:>9.0f}"
              f"{r['diffusers_median_s'] * 1e3:>11.0f}{r['ratio_ours_over_diffusers']:>7.3f}"
              f"{r['ours_min_s'] * 1e3:>10.0f}{r['diffusers_min_s'] * 1e3:>11.0f}{r['ratio_min']:>7.3f}"
              f"{r['ratio_cpu']:>10.3f}{r['output_max_abs_diff']:>11.2e}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": str(device), "dtype": dtype_name, "batch": args.batch, "size": args.size,
                "threads": torch.get_num_threads(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                "warmup": args.warmup, "repeats": args.repeats}
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
