"""`cascadekit sample --offload none|model|sequential` and the peak accelerator memory line."""
from __future__ import annotations

from typing import Callable

import click

MODES = ("none", "model", "sequential")  # generator/offload.py MODES (not imported: no torch at parse time)
META_KEY = "cascadekit.offload"


def _remember(ctx: click.Context, param: click.Parameter, value: str) -> str:
    ctx.meta[META_KEY] = value
    return value


def offload_option(command: Callable) -> Callable:
    """Add ``--offload`` to a click command; the command reads it with :func:`picked_offload` (the option is
    kept out of the command's parameters, so adding it changes no signature)."""
    return click.option(
        "--offload", "offload", default="none", show_default=True, type=click.Choice(MODES), expose_value=False,
        callback=_remember,
        help="Small accelerators: 'model' keeps every network on the CPU and moves each stage (text encoder, "
             "Stage C, decoder) to --device only while it runs; 'sequential' moves one layer at a time (slowest, "
             "least memory). Same images either way.")(command)


def picked_offload() -> str:
    """The ``--offload`` value of the running command (``"none"`` outside one)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(META_KEY, "none") if ctx is not None else "none"


def reset_peak(device) -> None:
    """Start counting peak accelerator memory (CUDA only)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def report_peak(device) -> None:
    """Print ``peak accelerator memory: X GiB`` on a CUDA device (nothing elsewhere)."""
    from cascadekit.generator.offload import peak_memory

    peak = peak_memory(device)
    if peak is not None:
        click.echo(f"peak accelerator memory: {peak / 2**30:.2f} GiB on {device}", err=True)
