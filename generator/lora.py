"""LoRA for Stage C: a low-rank delta on linear weights and on the packed attention ``in_proj_weight``.

The delta is attached with ``torch.nn.utils.parametrize``, so the model code stays untouched: every
read of ``module.weight`` (or ``module.in_proj_weight`` of the SDPA attention, which keeps the
official ``nn.MultiheadAttention`` parameter names) returns ``W + (alpha / rank) * up @ down``.

* :func:`apply_lora` freezes the model and adds trainable ``down`` (rank, in) / ``up`` (out, rank)
  factors to the 2-D weights of the modules whose name contains one of ``targets`` (default
  ``[".attn"]`` = attention in/out projections, the official ``module_filters``).
* :func:`lora_state_dict` / :func:`save_lora` / :func:`load_lora` handle the factors alone
  (safetensors, keys ``<module>.<param>.lora_down`` / ``.lora_up``, rank/alpha/targets in metadata).
* :func:`merge_lora` folds the deltas into the weights and removes the parametrizations, leaving a
  plain model whose ``state_dict`` has the official keys.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from cascadekit.codec.errors import InputError, WeightsError

WEIGHT_NAMES = ("weight", "in_proj_weight")


class LoRADelta(nn.Module):
    """Parametrization ``W -> W + scale * up @ down`` for a (out, in) weight.

    ``down`` starts Kaiming-uniform and ``up`` at zero, so the wrapped model starts equal to the base.
    """

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float,
                 device=None, dtype=None, generator: torch.Generator | None = None):
        super().__init__()
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        self.enabled = True
        self.lora_down = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_up = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)) bound, as nn.Linear
        with torch.no_grad():
            u = torch.rand(rank, in_features, generator=generator, dtype=torch.float32) * 2 - 1
            self.lora_down.copy_(u * bound)

    def delta(self) -> torch.Tensor:
        """The weight update ``scale * lora_up @ lora_down``, (out_features, in_features) in the factors' dtype."""
        return (self.lora_up @ self.lora_down) * self.scale  # (out, in)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        return weight + self.delta().to(weight.dtype)


def _lora_slots(model: nn.Module, targets: Sequence[str]) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, parameter name) of every 2-D weight under a matching module name."""
    slots = []
    for name, module in model.named_modules():
        if not any(t in name for t in targets):
            continue
        for pname in WEIGHT_NAMES:
            if parametrize.is_parametrized(module, pname):
                continue
            p = module._parameters.get(pname)
            if isinstance(p, nn.Parameter) and p.dim() == 2:
                slots.append((name, module, pname))
    return slots


def apply_lora(model: nn.Module, rank: int, alpha: float = 1.0, targets: Sequence[str] = (".attn",),
               seed: int = 0) -> list[str]:
    """Freeze ``model`` and attach LoRA factors; returns the wrapped ``<module>.<param>`` names.

    Raises :class:`InputError` if no module name contains any of ``targets``.
    """
    if rank < 1:
        raise InputError(f"LoRA rank must be >= 1, got {rank}")
    model.requires_grad_(False)
    slots = _lora_slots(model, targets)
    if not slots:
        raise InputError(f"no linear/attention weight found under module names containing {list(targets)}; "
                         "LoRA targets are substrings of module names, e.g. '.attn' or 'kv_mapper'")
    g = torch.Generator().manual_seed(seed)
    names = []
    for mname, module, pname in slots:
        w = getattr(module, pname)
        delta = LoRADelta(w.shape[0], w.shape[1], rank, alpha, device=w.device, dtype=w.dtype, generator=g)
        parametrize.register_parametrization(module, pname, delta)
        names.append(f"{mname}.{pname}")
    return names


def _deltas(model: nn.Module) -> Iterable[tuple[str, LoRADelta]]:
    for mname, module in model.named_modules():
        plist = getattr(module, "parametrizations", None)
        if plist is None:
            continue
        for pname in WEIGHT_NAMES:
            if pname in plist:
                for p in plist[pname]:
                    if isinstance(p, LoRADelta):
                        yield f"{mname}.{pname}", p


def lora_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named LoRA factors (the only trainable parameters in LoRA mode), in a stable order."""
    out = []
    for key, d in _deltas(model):
        out.append((f"{key}.lora_down", d.lora_down))
        out.append((f"{key}.lora_up", d.lora_up))
    return out


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``<layer>.lora_down`` (rank, in) and ``<layer>.lora_up`` (out, rank) of every LoRA layer (detached)."""
    return {k: v.detach() for k, v in lora_parameters(model)}


def lora_config(model: nn.Module) -> dict:
    """``{"rank", "alpha"}`` of the model's LoRA layers; :class:`InputError` when it has none."""
    ds = list(_deltas(model))
    if not ds:
        raise InputError("the model carries no LoRA factors")
    return {"rank": ds[0][1].rank, "alpha": ds[0][1].alpha}


def save_lora(model: nn.Module, path: str | Path, targets: Sequence[str] = (".attn",), extra: dict | None = None) -> Path:
    """Write the LoRA factors alone as safetensors (atomic: tmp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    cfg = lora_config(model)
    meta = {"format": "cascadekit-lora", "rank": str(cfg["rank"]), "alpha": repr(cfg["alpha"]),
            "targets": json.dumps(list(targets))}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    tensors = {k: v.float().contiguous().cpu() for k, v in lora_state_dict(model).items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (factors, {"rank", "alpha", "targets"}) of a LoRA file written by :func:`save_lora`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:
        raise WeightsError(f"{path} is not a readable safetensors LoRA file: {e}") from e
    if meta.get("format") != "cascadekit-lora":
        raise WeightsError(f"{path} is not a cascadekit LoRA file (metadata format={meta.get('format')!r})")
    return tensors, {"rank": int(meta["rank"]), "alpha": float(meta["alpha"]), "targets": json.loads(meta["targets"])}


def load_lora(model: nn.Module, path: str | Path, merge: bool = False) -> nn.Module:
    """Attach the LoRA of ``path`` to ``model`` (same targets/rank as saved) and load its factors.

    With ``merge=True`` the deltas are folded into the weights (plain model, official keys).
    """
    tensors, cfg = read_lora(path)
    if not list(_deltas(model)):
        apply_lora(model, cfg["rank"], cfg["alpha"], cfg["targets"])
    own = dict(lora_parameters(model))
    missing, unexpected = own.keys() - tensors.keys(), tensors.keys() - own.keys()
    if missing or unexpected:
        raise WeightsError(f"LoRA file {path} does not fit this model: {len(missing)} missing factor(s) "
                           f"{sorted(missing)[:3]}, {len(unexpected)} unexpected {sorted(unexpected)[:3]} "
                           "(was it trained for another Stage C preset?)")
    with torch.no_grad():
        for k, p in own.items():
            if tuple(p.shape) != tuple(tensors[k].shape):
                raise WeightsError(f"LoRA factor {k}: file {list(tensors[k].shape)} vs model {list(p.shape)}")
            p.copy_(tensors[k].to(p.dtype))
    if merge:
        merge_lora(model)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA delta into its weight and remove the parametrizations (in place)."""
    for mname, module in list(model.named_modules()):
        for pname in WEIGHT_NAMES:
            if parametrize.is_parametrized(module, pname):
                parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
    return model


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under official keys WITHOUT the LoRA deltas (the frozen base)."""
    out = {}
    for k, v in model.state_dict().items():
        if ".parametrizations." in k:
            if k.endswith(".original"):
                mod, rest = k.split(".parametrizations.", 1)
                out[f"{mod}.{rest[: -len('.original')]}"] = v
            continue
        out[k] = v
    return out


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under official keys WITH the LoRA deltas folded in (model left unchanged)."""
    out = base_state_dict(model)
    with torch.no_grad():
        for key, d in _deltas(model):
            out[key] = out[key] + d.delta().to(out[key].dtype)
    return out
