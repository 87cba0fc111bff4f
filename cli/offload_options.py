"""`cascadekit sample --offload none|model|sequential` and the peak accelerator memory line."""
from __future__ import annotations

from typing import Callable

import click

MODES = ("none", "model", "sequential")  # generator/offload.py MODES (not imported: no torch at parse time)


def offload_option(command: Callable) -> Callable:
    """Add ``--offload`` to a click command."""
    return click.option(
        "--offload", "offload", default="none", show_default=True, type=click.Choice(MODES),
        help="Small accelerators: 'model' keeps every network on the CPU and moves each stage (text encoder, "
             "Stage C, decoder) to --device only while it runs; 'sequential' moves one layer at a time (slowest, "
             "least memory). Same images either way.")(command)


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
