"""torchrun support: rank/world from the environment, process group setup, chunk-aligned shares.

``torchrun --nproc-per-node N -m cascadekit.cli encode ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; a plain ``python`` run is rank 0 of 1 and
never touches ``torch.distributed``.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def from_env() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment variables (defaults: 0, 1, 0)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(info: DistInfo, device: torch.device | None = None, timeout_s: float = 3600.0) -> bool:
    """Start the default process group if ``info`` has several ranks and none is running.

    Uses NCCL for CUDA devices and gloo otherwise. Returns True if this call started it (the caller
    then calls :func:`shutdown`).
    """
    if not info.active or dist.is_initialized():
        return False
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)  # object collectives use the current device
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (pickled through the process group)."""
    if not (info.active and dist.is_initialized()):
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj, info: DistInfo) -> list:
    if not (info.active and dist.is_initialized()):
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def share(n_chunks: int, info: DistInfo) -> range:
    """The contiguous range of chunk indices rank ``info.rank`` owns (disjoint, covering all)."""
    lo = n_chunks * info.rank // info.world_size
    hi = n_chunks * (info.rank + 1) // info.world_size
    return range(lo, hi)
