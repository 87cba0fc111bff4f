"""AdamW with linear warm-up, then a constant (official) or cosine learning rate."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from cascadekit.generator.training.settings import CoreConfig


def lr_factor(cfg: CoreConfig) -> Callable[[int], float]:
    """``f(updates done) -> factor of lr for the next update``: (s+1)/warm during warm-up, then 1 or cosine."""
    warm, total = cfg.warmup_steps, cfg.steps

    def f(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if cfg.lr_schedule == "cosine":
            done = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        return 1.0

    return f


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: CoreConfig
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """(AdamW over ``params`` with the config's lr / betas / eps / weight decay, its LambdaLR schedule).

    The fused AdamW kernel runs when every parameter is a float tensor on CPU or CUDA (3-4x faster
    than the per-tensor loop on CPU: the optimizer share of a small Stage C step, docs/benchmarks.md).
    """
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay, fused=fused or None)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
