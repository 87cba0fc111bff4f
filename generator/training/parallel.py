"""DDP / FSDP around a training module, and full (unsharded) state dicts for checkpoints.

The process group itself (torchrun environment, device rule, collectives) is
:mod:`cascadekit.codec.distributed`. FSDP (for the 3.6B Stage C): FSDP1 ``FullyShardedDataParallel``,
FULL_SHARD with one FSDP unit per block type the task names (Stage C: ResBlock / AttnBlock /
TimestepBlock, the official ``ModuleWrapPolicy``), ``use_orig_params`` so the parameter names stay the
official ones. Runs on CUDA (NCCL) and on CPU (gloo, used by the tests). Checkpoints gather a full,
CPU-offloaded state dict (official keys) and a full optimizer state keyed by parameter name on rank 0;
:func:`load_optim_state` reads either layout, so runs can switch between DDP and FSDP (and change world
size) on resume.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, ShardingStrategy, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from torch.nn.parallel import DistributedDataParallel as DDP

from cascadekit.codec.distributed import DistInfo
from cascadekit.codec.errors import InputError


def wrap(model: nn.Module, info: DistInfo, device: torch.device, fsdp: bool = False,
         units: tuple[type[nn.Module], ...] = ()) -> nn.Module:
    """DDP (default) or FSDP (one unit per module of a type in ``units``) around ``model`` when running on
    several processes; the model itself otherwise."""
    if not info.active:
        return model
    if fsdp:
        cuda = device.type == "cuda"
        if not cuda:  # FSDP's own sync_module_states needs GPU tensors: broadcast rank 0's weights here
            _broadcast_module(model)
        # device_id names the compute device (also on CPU: without it FSDP looks for an accelerator)
        return FSDP(model, sharding_strategy=ShardingStrategy.FULL_SHARD,
                    auto_wrap_policy=ModuleWrapPolicy(set(units)),
                    device_id=device, use_orig_params=True, sync_module_states=cuda)
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               broadcast_buffers=False)


def _broadcast_module(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (in place)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def is_fsdp(model: nn.Module) -> bool:
    return isinstance(model, FSDP)


@contextlib.contextmanager
def _full_state_type(model: nn.Module):
    """FSDP1's FULL_STATE_DICT mode, gathered on rank 0 and offloaded to CPU (quiet about the deprecation
    notice of newer torch: this API is the one every supported torch >= 2.4 has)."""
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
    ids = [i for g in state["param_groups"] for i in g["params"]]
    missing = [i for i in ids if i not in mapping]
    if missing or len(ids) != len(mapping):
        raise InputError(f"the checkpoint's optimizer state covers {len(ids)} parameters, this model trains "
                         f"{len(mapping)} (unknown: {missing[:5]}); resume with the model of the checkpoint")
    return {"state": {mapping[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [mapping[i] for i in g["params"]]} for g in state["param_groups"]]}
