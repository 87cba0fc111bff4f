"""The noise a Stage B decode starts from and draws at every step: per-sample streams or the caller's own.

A *draw* function maps a slice of the batch to ``(x_init (n,C,h,w), [noise (n,C,h,w)] * steps)`` on CPU
in float32, so decoding in chunks sees exactly the noise of the whole batch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from cascadekit.codec.errors import InputError

Draw = Callable[[slice], tuple[torch.Tensor, list[torch.Tensor]]]


def per_sample_noise(batch: int, shape: tuple[int, ...], steps: int, generator: torch.Generator | None) -> Draw:
    """Per-sample start noise and per-step noise, independent of how the batch is chunked.

    Sample i draws from its own CPU generator seeded from ``generator`` (one 62-bit seed per sample,
    drawn in order), so a seed gives the same noise for sample i with any ``batch_size`` and on any
    device. Without a generator the global RNG is used. ``shape``: (C, h, w) of one sample.
    """
    if generator is None:
        def draw_global(sl: slice):
            n = sl.stop - sl.start
            x_init = torch.randn((n, *shape))
            return x_init, [torch.randn((n, *shape)) for _ in range(steps)]
        return draw_global
    seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=generator.device).tolist()

    def draw(sl: slice):
        xs, ns = [], []
        for s in seeds[sl]:
            g = torch.Generator("cpu").manual_seed(int(s))
            xs.append(torch.randn((1, *shape), generator=g))
            ns.append([torch.randn((1, *shape), generator=g) for _ in range(steps)])
        return torch.cat(xs), [torch.cat([n[i] for n in ns]) for i in range(steps)]

    return draw


def explicit_noise(x_init: torch.Tensor | None, noise: Sequence[torch.Tensor] | None, steps: int,
                   shape: tuple[int, ...]) -> Draw:
    """The caller's noise for the whole batch: ``x_init`` (B,C,h,w) and one (B,C,h,w) tensor per step.

    ``shape`` is (B, C, h, w); a missing part, a wrong count or a wrong shape is an :class:`InputError`.
    """
    if noise is None or x_init is None or len(noise) != steps:
        raise InputError(f"explicit noise needs both x_init {shape} and `noise` with one tensor per step ({steps})")
    for t in [x_init, *noise]:
        if tuple(t.shape) != tuple(shape):
            raise InputError(f"explicit noise has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return lambda sl: (x_init[sl].float().cpu(), [n[sl].float().cpu() for n in noise])


__all__ = ["Draw", "explicit_noise", "per_sample_noise"]
