"""What every command shares: the device rule, the default weights (announced when they are the tiny random
set), and turning a user error into one readable line and exit status 2."""
from __future__ import annotations

import functools
import os
import sys

import click

from cascadekit.codec.errors import CascadeKitError


def pick_device(name: str | None):
    """``--device`` as given, else ``cuda:LOCAL_RANK`` when CUDA is available (torchrun), else ``cpu``.

    A bare ``cuda`` under a multi-process torchrun launch also becomes ``cuda:LOCAL_RANK``.
    """
    import torch

    local = int(os.environ.get("LOCAL_RANK", 0))
    if name is None or name == "auto":
        return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dev = torch.device(f"cuda:{local}")
    return dev


def default_dtype(dtype: str | None, device) -> str:
    """``--dtype`` as given, else bf16 on CUDA and fp32 elsewhere."""
    return dtype or ("bf16" if device.type == "cuda" else "fp32")


def pick_weights(weights, *, stage_b: str = "lite", announce: bool = True):
    """``(source, info, tiny)`` for ``--weights``; without it, :func:`cascadekit.codec.defaults.default_weights`
    (official weights when found, else the tiny RANDOM set, whose banner is printed once when ``announce``)."""
    if weights is not None:
        return weights, {"source": str(weights)}, False
    from cascadekit.codec.defaults import TINY_BANNER, default_weights

    chosen = default_weights(stage_b=stage_b)
    if chosen.tiny and announce:
        click.echo(TINY_BANNER, err=True)
    return chosen.source, {"source": str(chosen.source), "chosen_because": chosen.why}, chosen.tiny


def reports_user_errors(command):
    """Decorator: a :class:`CascadeKitError` becomes ``error: <message>`` on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CascadeKitError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


def open_previewer(weights):
    """``(codec holding only the previewer, None)``, or ``(None, why)`` when the weights have no previewer
    (e.g. diffusers snapshots): previews are then skipped with that reason, the rest of a report still runs."""
    import warnings

    from cascadekit.codec.codec import Codec
    from cascadekit.codec.errors import WeightsError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reports say which encoder made the store
        try:  # only the previewer: Stage B, Stage A and the effnet are not needed for previews
            return Codec.from_pretrained(weights, device="cpu", components=("previewer",)), None
        except WeightsError as e:
            return None, f"{e}\n(pass --weights with a previewer.safetensors, or --no-preview)"
