"""What every command shares: the device rule (and a clear refusal of a device this machine lacks), the default
weights (announced when they are the tiny random set), and turning a user error into one readable line and exit
status 2."""
from __future__ import annotations

import errno
import functools
import re
import sys

import click

from cascadekit.codec.errors import CascadeKitError, InputError
from cascadekit.codec.fsio import describe_os_error
from cascadekit.metrics.errors import MetricsError

DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(:\d+)?")
# OSErrors that are the user's environment, not a bug: one line instead of a traceback
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def check_device(name: str | None, flag: str = "--device"):
    """``name`` as a ``torch.device`` this machine has (None / ``auto`` -> None), else InputError saying which
    devices exist. ``cuda`` without CUDA, ``cuda:7`` on a 2-GPU machine, ``banana``: one clear message that
    starts with ``flag`` (empty: no prefix, for click, which names the flag itself)."""
    if name is None or name == "auto":
        return None
    what = f"{flag} {name}" if flag else str(name)
    if not DEVICE_PATTERN.fullmatch(str(name)):  # refused without importing torch
        raise InputError(f"{what}: not a device; use auto, cpu, cuda, cuda:N or mps")
    import torch  # lazy: only a cuda/mps/cpu name needs it

    dev = torch.device(name)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise InputError(f"{what}: this machine has {count or 'no'} CUDA device(s); "
                             f"available: {', '.join(available_devices())}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{what}: MPS is not available here; available: {', '.join(available_devices())}")
    return dev


def available_devices() -> list[str]:
    """The devices ``--device`` accepts on this machine: cpu, cuda:0.., mps."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def pick_device(name: str | None):
    """``--device`` as a ``torch.device`` by :func:`cascadekit.codec.distributed.local_device` (None / ``auto``:
    ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; a bare ``cuda`` is ``cuda:LOCAL_RANK``), after
    :func:`check_device` made sure this machine has it (InputError otherwise)."""
    from cascadekit.codec.distributed import local_device

    check_device(name)
    dev = local_device(name)
    check_device(str(dev))  # cuda:LOCAL_RANK must exist too
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


def user_error_message(exc: BaseException) -> str | None:
    """The one line a user error becomes, or None for anything else (a bug: its traceback stays).

    User errors: :class:`CascadeKitError`, the metrics package's ``MetricsError``, and an OSError that is the
    environment's (full disk or quota, read-only file system, permission denied)."""
    if isinstance(exc, (CascadeKitError, MetricsError)):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        where = exc.filename or "an output file"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{where}: permission denied; choose files and folders you can read and write"
        return describe_os_error(exc, where)
    return None


def reports_user_errors(command):
    """Decorator: a user error (:func:`user_error_message`) becomes ``error: <message>`` on stderr and exit
    status 2; anything else propagates unchanged."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (CascadeKitError, MetricsError, OSError) as e:
            message = user_error_message(e)
            if message is None:
                raise
            click.echo(f"error: {message}", err=True)
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
