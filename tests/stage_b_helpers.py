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
    g["latents"][:] = effnet.numpy()
    if with_stage_a:
        g["stage_a"][:] = stage_a.numpy()
    g["captions"][:] = np.asarray([f"caption {i}" for i in range(n)]).astype(str)
    g["keys"][:] = np.asarray([f"k{i}" for i in range(n)]).astype(str)
    if pooled is not None:
        for name, arr in (("clip_text", torch.zeros(n, 2, pooled.shape[-1])), ("clip_text_pooled", pooled)):
            g.create_array(name, shape=tuple(arr.shape), chunks=(chunk_rows, *arr.shape[1:]), dtype="float32",
                           fill_value=0)
            g[name][:] = arr.numpy()
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
    g["effnet_scales"][:] = arr
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
