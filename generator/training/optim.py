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
    """(AdamW over ``params`` with the config's lr / betas / eps / weight decay, its LambdaLR schedule)."""
    opt = torch.optim.AdamW(list(params), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
