"""Exponential moving average of the trainable parameters (float32 shadow copies, by name)."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` for each named trainable parameter.

    The shadow tensors are float32 on the parameters' device. Before ``start_step`` the shadow just
    copies the parameters (the official ``ema_start_iters`` behaviour, ``beta = 0``).
    """

    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], decay: float, start_step: int = 0):
        self.decay = float(decay)
        self.start_step = int(start_step)
        self.shadow: dict[str, torch.Tensor] = {n: p.detach().float().clone() for n, p in named_params}

    @torch.no_grad()
    def update(self, named_params: Iterable[tuple[str, torch.Tensor]], step: int) -> None:
        beta = self.decay if step > self.start_step else 0.0
        for n, p in named_params:
            s = self.shadow[n]
            s.mul_(beta).add_(p.detach().float(), alpha=1.0 - beta)

    @torch.no_grad()
    def copy_to(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Write the averages into the parameters (named as when the EMA was built)."""
        for n, p in named_params:
            p.copy_(self.shadow[n].to(p.dtype))

    @contextlib.contextmanager
    def applied(self, named_params: list[tuple[str, torch.Tensor]]) -> Iterator[None]:
        """Inside the block the parameters hold the averages; afterwards their own values again."""
        saved = [p.detach().clone() for _, p in named_params]
        self.copy_to(named_params)
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), s in zip(named_params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "start_step": self.start_step, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        missing = self.shadow.keys() - state["shadow"].keys()
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameter(s), e.g. {sorted(missing)[:3]}")
        self.decay = float(state["decay"])
        self.start_step = int(state["start_step"])
        for n in self.shadow:
            self.shadow[n].copy_(state["shadow"][n])
