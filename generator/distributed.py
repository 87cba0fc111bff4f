"""torchrun integration: process-group setup, DDP / FSDP wrapping, collective helpers, full state dicts.

Launch: ``torchrun --nproc_per_node N -m cascadekit.cli.main train ...``. The environment variables
RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun) select distributed mode; without them everything
runs in one process. Backend: NCCL on CUDA, gloo on CPU.

FSDP (for the 3.6B Stage C): FSDP1 ``FullyShardedDataParallel``, FULL_SHARD with one FSDP unit per
ResBlock / AttnBlock / TimestepBlock (the official ``ModuleWrapPolicy``), ``use_orig_params`` so the
parameter names stay the official ones. Runs on CUDA (NCCL) and on CPU (gloo, used by the tests).
Checkpoints gather a full, CPU-offloaded state dict (official keys) and a full optimizer state keyed
by parameter name on rank 0; :func:`load_optim_state` reads either layout, so runs can switch
between DDP and FSDP (and change world size) on resume.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Join the torchrun process group if the environment asks for one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        here = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, initialized_here=here)


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, fsdp: bool = False) -> nn.Module:
    """DDP (default) or FSDP around ``model`` when running on several processes; the model itself otherwise."""
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import ShardingStrategy
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        from cascadekit.codec.models.blocks import AttnBlock, ResBlock, TimestepBlock

        cuda = info.device.type == "cuda"
        if not cuda:  # FSDP's own sync_module_states needs GPU tensors: broadcast rank 0's weights here
            _broadcast_module(model)
        # device_id names the compute device (also on CPU: without it FSDP looks for an accelerator)
        return FSDP(model, sharding_strategy=ShardingStrategy.FULL_SHARD,
                    auto_wrap_policy=ModuleWrapPolicy({ResBlock, AttnBlock, TimestepBlock}),
                    device_id=info.device, use_orig_params=True, sync_module_states=cuda)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
               broadcast_buffers=False)


def _broadcast_module(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (in place)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, FSDP)


@contextlib.contextmanager
def _full_state_type(model: nn.Module):
    """FSDP1's FULL_STATE_DICT mode, gathered on rank 0 and offloaded to CPU (quiet about the deprecation
    notice of newer torch: this API is the one every supported torch >= 2.4 has)."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    # Offload only from an accelerator: on CPU, FSDP1's optimizer-state gather with offload_to_cpu hands
    # out views of one reused gather buffer (``.cpu()`` is a no-op there), so exp_avg and exp_avg_sq come
    # back as the same tensor; without offload each state is cloned.
    offload = next(model.parameters()).device.type != "cpu"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*state_dict_type")
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
                                  FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True)):
            yield


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state on CPU, official key names (FSDP: collective, call on every rank;
    rank 0 gets the full dict, the others an empty one)."""
    if is_fsdp(model):
        with _full_state_type(model):
            return model.state_dict()
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def full_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state. Plain / DDP: ``optimizer.state_dict()`` (parameters numbered in optimizer order).
    FSDP: the full (unsharded) state keyed by parameter name; collective, rank 0 gets it."""
    if is_fsdp(model):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with _full_state_type(model):
            return FSDP.optim_state_dict(model, optimizer)
    return optimizer.state_dict()


def load_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, names: list[str]) -> None:
    """Load a state of :func:`full_optim_state` written with or without FSDP (any world size).

    names: the trainable parameter names in the order they were given to the optimizer (the order of
    the numbered, non-FSDP layout); used to convert between the numbered and the named layout, so a
    DDP run can be resumed under FSDP and the other way round. FSDP: call on every rank with the full state.
    """
    named = _is_named(state)
    if is_fsdp(model):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if not named:
            state = _rekey(state, dict(enumerate(names)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            state = FSDP.optim_state_dict_to_load(model, optimizer, state)
    elif named:
        state = _rekey(state, {n: i for i, n in enumerate(names)})
    optimizer.load_state_dict(state)


def _is_named(state: dict) -> bool:
    ids = [i for g in state.get("param_groups", []) for i in g.get("params", [])]
    return bool(ids) and all(isinstance(i, str) for i in ids)


def _rekey(state: dict, mapping: dict) -> dict:
    """The same optimizer state with its parameter keys renamed through ``mapping`` (numbers <-> names)."""
    from cascadekit.codec.errors import InputError

    ids = [i for g in state["param_groups"] for i in g["params"]]
    missing = [i for i in ids if i not in mapping]
    if missing or len(ids) != len(mapping):
        raise InputError(f"the checkpoint's optimizer state covers {len(ids)} parameters, this model trains "
                         f"{len(mapping)} (unknown: {missing[:5]}); resume with the model of the checkpoint")
    return {"state": {mapping[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [mapping[i] for i in g["params"]]} for g in state["param_groups"]]}


def all_finite(value: torch.Tensor, info: DistInfo) -> bool:
    """True iff ``value`` is finite on every process (every process gets the same answer)."""
    ok = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if info.enabled:
        ok = ok.to(info.device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def all_gather_cat(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate equally shaped (B, ...) tensors of all ranks along dim 0 (rank order)."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
