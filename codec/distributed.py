"""The one process-group layer of cascadekit: rank / world from torchrun, the device rule, collectives.

``torchrun --nproc-per-node N -m cascadekit.cli encode|train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. A plain ``python`` run is rank 0 of 1 and never
touches ``torch.distributed``: every helper here is then a no-op. ``encode`` (``cascadekit.datasets``)
and ``train`` (``cascadekit.generator``) both use this module; DDP/FSDP wrapping of a network lives
with the training core (``cascadekit.generator.training.parallel``).

Device rule (one place): no device given -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``;
a bare ``cuda`` -> ``cuda:LOCAL_RANK`` (each torchrun process on its own GPU).
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cascadekit.codec.errors import InputError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a run: ``rank`` in [0, world_size), ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes shared files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives really communicate."""
        return self.world_size > 1


def from_env(environ: Mapping[str, str] | None = None) -> DistInfo:
    """Rank, world size and local rank from torchrun's environment variables (defaults 0, 1, 0).

    A malformed value (``RANK=x``, ``WORLD_SIZE=0``, ``RANK >= WORLD_SIZE``) is an :class:`InputError`."""
    env = os.environ if environ is None else environ
    vals = {}
    for name, default in zip(ENV_VARS, ("0", "1", "0")):
        text = env.get(name, default)
        try:
            vals[name] = int(text)
        except ValueError:
            raise InputError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None
    rank, world, local = vals["RANK"], vals["WORLD_SIZE"], vals["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InputError(f"inconsistent torchrun environment RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def local_device(name: str | torch.device | None = None, info: DistInfo | None = None) -> torch.device:
    """The device this process computes on (see the module docstring for the rule).

    name: ``None``/``"auto"``, or anything ``torch.device`` accepts (``cpu``, ``cuda``, ``cuda:1``)."""
    local = (info or from_env()).local_rank
    if name is None or name == "auto":
        return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {str(name)!r} (use cpu, cuda, cuda:N, mps ...)") from None
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local}")
    return dev


def init(info: DistInfo, device: torch.device | None = None, timeout_s: float = 3600.0) -> bool:
    """Start the default process group if ``info`` has several ranks and none is running.

    NCCL for CUDA devices, gloo otherwise. Returns True if this call started it (the caller then calls
    :func:`shutdown`)."""
    if not info.active or dist.is_initialized():
        return False
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)  # object collectives use the current device
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return True


def current(info: DistInfo) -> DistInfo:
    """``info`` with rank / world size of the running process group (a caller may have started it)."""
    if not dist.is_initialized():
        return info
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=info.local_rank)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _live(info: DistInfo) -> bool:
    return info.active and dist.is_initialized()


def barrier(info: DistInfo) -> None:
    if _live(info):
        dist.barrier()


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (pickled through the process group, never from disk)."""
    if not _live(info):
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order."""
    if not _live(info):
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_finite(value: torch.Tensor, info: DistInfo) -> bool:
    """True iff ``value`` is finite on every process (every process gets the same answer)."""
    ok = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if _live(info):
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def all_gather_cat(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate equally shaped (B, ...) tensors of all ranks along dim 0 (rank order)."""
    if not _live(info):
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def share(n_items: int, info: DistInfo) -> range:
    """The contiguous range of item indices (e.g. store chunks) rank ``info.rank`` owns: disjoint, covering all."""
    lo = n_items * info.rank // info.world_size
    hi = n_items * (info.rank + 1) // info.world_size
    return range(lo, hi)
