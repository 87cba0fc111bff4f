"""Helpers for the Stage B tests: stores with Stage A latents written through the datasets store API.

Importable by subprocesses (the 2-process DDP test) through ``PYTHONPATH=tests``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

C_CLIP_TINY = 32


def learnable_stage_a(n: int, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """(n,4,h,w): smooth per-sample patterns of unit scale (a target a tiny Stage B can fit)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 4, 1, 1, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return (base * (1 + 0.5 * torch.sin(3 * xx + 2 * yy + torch.arange(n).view(n, 1, 1, 1)))).float()


def write_b_store(path: Path, stage_a: torch.Tensor, effnet: torch.Tensor, *, pooled: torch.Tensor | None = None,
                  scales: dict[float, torch.Tensor] | None = None, chunk_rows: int = 4, with_stage_a: bool = True,
                  empty_pooled: torch.Tensor | None = None) -> Path:
    """A complete one-group store: ``stage_a`` (n,4,H,W), ``latents`` = effnet (n,16,h,w), optional
    ``clip_text_pooled`` (n,1,P) (+ clip_text zeros, text_status ok), ``effnet_scales`` {factor: (n,16,h_s,w_s)}."""
    from cascadekit.datasets import store as S

    n = int(effnet.shape[0])
    layout = S.GroupLayout("", n, tuple(effnet.shape[1:]), tuple(stage_a.shape[1:]) if with_stage_a else None)
    root = S.create_store(path, [layout], chunk_rows=chunk_rows, dtype="float32", attrs={})
    g = S.sample_group(root, "")
    S.writable(g["latents"])[:] = effnet.numpy()  # every chunk written, also an all-zero one
    if with_stage_a:
        S.writable(g["stage_a"])[:] = stage_a.numpy()
    g["captions"][:] = np.asarray([f"caption {i}" for i in range(n)]).astype(str)
    g["keys"][:] = np.asarray([f"k{i}" for i in range(n)]).astype(str)
    if pooled is not None:
        for name, arr in (("clip_text", torch.zeros(n, 2, pooled.shape[-1])), ("clip_text_pooled", pooled)):
            g.create_array(name, shape=tuple(arr.shape), chunks=(chunk_rows, *arr.shape[1:]), dtype="float32",
                           fill_value=0)
            S.writable(g[name])[:] = arr.numpy()
        g.create_array("text_status", shape=(n,), chunks=(chunk_rows,), dtype="uint8", fill_value=0)
        g["text_status"][:] = np.full(n, S.STATUS_OK, np.uint8)
    if scales:
        _write_scales(g, scales, n, chunk_rows)
    if empty_pooled is not None:
        for name, arr in (("empty_clip_text", torch.zeros(1, 2, empty_pooled.shape[-1])),
                          ("empty_clip_text_pooled", empty_pooled.reshape(1, 1, -1))):
            root.create_array(name, shape=tuple(arr.shape), dtype="float32", fill_value=0)
            root[name][:] = arr.numpy()
    g["status"][:] = np.full(n, S.STATUS_OK, np.uint8)
    S.finalize_store(path)
    return path


def _write_scales(g, scales: dict[float, torch.Tensor], n: int, chunk_rows: int) -> None:
    factors = sorted(scales)
    hm = max(scales[f].shape[-2] for f in factors)
    wm = max(scales[f].shape[-1] for f in factors)
    arr = np.zeros((n, len(factors), 16, hm, wm), np.float32)
    for i, f in enumerate(factors):
        t = scales[f]
        arr[:, i, :, :t.shape[-2], :t.shape[-1]] = t.numpy()
    g.create_array("effnet_scales", shape=arr.shape, chunks=(chunk_rows, *arr.shape[1:]), dtype="float32",
                   fill_value=0)
    from cascadekit.datasets.store import writable

    writable(g["effnet_scales"])[:] = arr
    g.create_array("effnet_scales_status", shape=(n,), chunks=(chunk_rows,), dtype="uint8", fill_value=0)
    writable(g["effnet_scales_status"])[:] = np.full(n, 1, np.uint8)  # its own status, as the store writes it
    g.attrs.update({"effnet_scales": factors, "effnet_scale_sizes": [list(scales[f].shape[-2:]) for f in factors]})


def simple_store(path: Path, n: int = 8, side: int = 32, seed: int = 0, **kw) -> Path:
    """Learnable Stage A targets, effnet latents derived from them (so the condition tells samples apart)."""
    sa = learnable_stage_a(n, side, side, seed)
    eff = torch.nn.functional.avg_pool2d(sa, side // 4).repeat(1, 4, 1, 1)  # (n,16,4,4)
    return write_b_store(path, sa, eff, **kw)


def ddp_worker(rank: int, world: int, port: int, store: str, out: str, cfg: dict, overrides: dict) -> None:
    """One process of a CPU (gloo) DDP Stage B run."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from cascadekit.generator.tasks.stage_b_config import StageBTrainConfig
    from cascadekit.generator.train_stage_b import train_stage_b

    train_stage_b(store, StageBTrainConfig.from_dict(cfg), out, device="cpu", empty_pooled=torch.zeros(1, 1, C_CLIP_TINY),
                  model_overrides=overrides, log=lambda m: None)


def mean_pool_stage_a(model) -> None:
    """Make a (tiny) StageA a known linear autoencoder, in place: encode = 4x4 mean of R, G, B (channels 0..2,
    channel 3 zero), decode = nearest upsampling of them. Its reconstructions have a real PSNR (~20 dB on
    photographs), unlike random weights, so a Stage B that learns the Stage A latents shows in image metrics."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every ResBlock's gammas -> 0: the blocks are identities
        conv_in = model.in_block[1]
        for c in range(3):
            conv_in.weight[c, c * 4:(c + 1) * 4] = 0.25  # PixelUnshuffle(2): channel c*4+s = colour c, sub-pixel s
        down = [m for m in model.down_blocks if isinstance(m, torch.nn.Conv2d)][0]
        for c in range(3):
            down.weight[c, c, 1:3, 1:3] = 0.25  # 4x4 stride-2 pad-1 kernel: taps 1..2 are the 2x2 block
        last = model.down_blocks[-1]
        for c in range(3):
            last[0].weight[c, c] = 1.0
        bn = last[1]
        bn.weight.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        for c in range(3):
            model.up_blocks[0][0].weight[c, c] = 1.0
        up = [m for m in model.up_blocks if isinstance(m, torch.nn.ConvTranspose2d)][0]
        for c in range(3):
            up.weight[c, c, 1:3, 1:3] = 1.0  # nearest x2
        out = model.out_block[0]
        for c in range(3):
            out.weight[c * 4:(c + 1) * 4, c] = 1.0  # PixelShuffle(2): every sub-pixel gets colour c


def weights_with_mean_pool_stage_a(src: Path, dst: Path) -> Path:
    """A private weights folder: the tiny set (symlinked) with Stage A replaced by :func:`mean_pool_stage_a`."""
    from safetensors.torch import load_file, save_file

    from cascadekit.codec.models.stage_a import StageA, StageAConfig

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("stage_a.safetensors",):
            (dst / f.name).symlink_to(f)
    model = StageA.from_config(StageAConfig.preset("tiny")).eval()
    model.load_state_dict(load_file(str(src / "stage_a.safetensors")))
    mean_pool_stage_a(model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dst / "stage_a.safetensors"))
    return dst


#: a small 2-level Stage B (unit 4: Stage A latents 8x8 for 32 px images) that trains in seconds on a CPU
SMALL_B = dict(patch_size=2, c_cond=32, c_hidden=[32, 64], nhead=[-1, 4], blocks=[[2, 2], [2, 2]],
               block_repeat=[[1, 1], [1, 1]], level_config=["CT", "CTA"], c_clip=32, dropout=[0, 0])


def small_codec(weights: Path, stage_b_file: Path | None = None):
    """A Codec of the tiny effnet, the mean-pool Stage A and a :data:`SMALL_B` Stage B (random, seed 0, or the
    weights in ``stage_b_file``), encoder resolution 32, empty caption = zeros."""
    import warnings

    from safetensors.torch import load_file

    from cascadekit.codec.codec import Codec
    from cascadekit.codec.models.stage_b import StageB, StageBConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = Codec.from_pretrained(weights, device="cpu", dtype="fp32", components=("stage_a", "effnet"))
    torch.manual_seed(0)
    sb = StageB.from_config(StageBConfig(**{**StageBConfig.preset("tiny").kwargs(), **SMALL_B}))
    if stage_b_file is not None:
        sb.load_state_dict(load_file(str(stage_b_file)))
    return Codec(parts.stage_a, parts.effnet, sb, empty_clip=torch.zeros(1, 1, C_CLIP_TINY), encoder_resolution=32)


def photo_folder(root: Path, n: int = 4, side: int = 32) -> Path:
    """``n`` scikit-image photographs, resized to ``side`` x ``side`` PNGs."""
    from PIL import Image
    from skimage import data

    root.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")[:n]:
        im = Image.fromarray(getattr(data, name)()).convert("RGB").resize((side, side), Image.BICUBIC)
        im.save(root / f"{name}.png")
    return root
