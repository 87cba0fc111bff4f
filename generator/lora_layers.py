"""LoRA layers on Stage C: a low-rank delta on linear weights and on the packed attention ``in_proj_weight``.

The delta is attached with ``torch.nn.utils.parametrize``, so the model code stays untouched: every
read of ``module.weight`` (or ``module.in_proj_weight`` of the SDPA attention, which keeps the
official ``nn.MultiheadAttention`` parameter names) returns ``W + strength * (alpha / rank) * up @ down``.

Which weights get a LoRA follows the official ``modules/lora.py``: every module whose name contains
one of ``targets`` (default ``[".attn"]``, the official ``module_filters``) gets one on its ``weight``
if it has one, else on its ``in_proj_weight`` (2-D weights only).

The official file numbers its layers in ``stage_c.modules()`` order *after* registration: the
``parametrizations`` child a registration adds comes after the module's own children, so a module's
LoRA follows those of its sub-modules (per attention block: ``attn.out_proj.weight`` first, then
``attn.in_proj_weight``). :func:`official_order` computes that order without registering anything.

Layer keys are ``<module name>.<parameter name>`` (e.g. ``down_blocks.0.2.attention.attn.in_proj_weight``).
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from cascadekit.codec.errors import InputError

WEIGHT_NAMES = ("weight", "in_proj_weight")
LORA_INITS = ("default", "official")


class LoRADelta(nn.Module):
    """Parametrization ``W -> W + strength * (alpha / rank) * up @ down`` for a (out, in) weight.

    init ``"default"``: ``down`` Kaiming-uniform, ``up`` zeros; ``"official"`` (the official trainer):
    ``down`` zeros, ``up`` N(0, 1). Either way the wrapped model starts equal to the base.
    ``strength`` (1.0) scales the delta at use (``--lora-scale``); it is not part of the saved factors.
    """

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, device=None, dtype=None,
                 generator: torch.Generator | None = None, init: str = "default"):
        super().__init__()
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        self.strength = 1.0
        self.enabled = True
        self.lora_down = nn.Parameter(torch.zeros(rank, in_features, device=device, dtype=dtype))
        self.lora_up = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        with torch.no_grad():
            if init == "official":
                self.lora_up.copy_(torch.randn(out_features, rank, generator=generator, dtype=torch.float32))
            else:
                bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)) bound, as nn.Linear
                u = torch.rand(rank, in_features, generator=generator, dtype=torch.float32) * 2 - 1
                self.lora_down.copy_(u * bound)

    def delta(self) -> torch.Tensor:
        """The weight update ``strength * scale * lora_up @ lora_down``, (out_features, in_features)."""
        return (self.lora_up @ self.lora_down) * (self.scale * self.strength)  # (out, in)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        return weight + self.delta().to(weight.dtype)


def lora_slot(module: nn.Module, taken: bool = False) -> str | None:
    """The parameter a LoRA goes on (official rule: ``weight``, else ``in_proj_weight``; 2-D only), or None.

    taken=True also answers for a parameter that already carries a parametrization (e.g. a LoRA).
    """
    for pname in WEIGHT_NAMES:
        if parametrize.is_parametrized(module, pname):
            if taken:
                return pname if module.parametrizations[pname].original.dim() == 2 else None
            continue
        p = module._parameters.get(pname)
        if isinstance(p, nn.Parameter):
            return pname if p.dim() == 2 else None
    return None


def unsupported_slots(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Matched modules whose official LoRA parameter is not 2-D (the official trainer would wrap it, cascadekit
    does not): a file in the official layout cannot describe such a LoRA."""
    out = []
    for n, m in model.named_modules():
        p = next((m._parameters.get(k) for k in WEIGHT_NAMES if isinstance(m._parameters.get(k), nn.Parameter)), None)
        if _matches(n, targets) and p is not None and p.dim() != 2:
            out.append(n)
    return out


def _post_order(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """(name, module) with every module after its children; existing ``parametrizations`` skipped."""
    for cname, child in module._modules.items():
        if child is not None and cname != "parametrizations":
            yield from _post_order(child, f"{prefix}.{cname}" if prefix else cname)
    yield prefix, module


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(t in name for t in targets)


def official_order(model: nn.Module, targets: Sequence[str] = (".attn",)) -> list[str]:
    """Layer keys in the official file order (``weights.<i>``) that ``targets`` select on ``model``
    (whether or not LoRA layers are attached already)."""
    return [f"{n}.{p}" for n, m in _post_order(model) if _matches(n, targets) and (p := lora_slot(m, taken=True))]


def lora_layers(model: nn.Module) -> list[tuple[str, LoRADelta]]:
    """(layer key, LoRADelta) of the model's LoRA layers in the official file order."""
    out = []
    for mname, module in _post_order(model):
        plist = getattr(module, "parametrizations", None)
        for pname in WEIGHT_NAMES:
            if plist is not None and pname in plist:
                out += [(f"{mname}.{pname}", d) for d in plist[pname] if isinstance(d, LoRADelta)]
    return out


def apply_lora(model: nn.Module, rank: int, alpha: float = 1.0, targets: Sequence[str] = (".attn",),
               seed: int = 0, init: str = "default") -> list[str]:
    """Freeze ``model`` and attach LoRA factors; returns the wrapped layer keys (registration order).

    init: ``"default"`` (down Kaiming-uniform, up zeros) or ``"official"`` (down zeros, up N(0, 1)).
    Raises :class:`InputError` if no module name contains any of ``targets``.
    """
    if rank < 1:
        raise InputError(f"LoRA rank must be >= 1, got {rank}")
    if init not in LORA_INITS:
        raise InputError(f"lora_init must be one of {', '.join(LORA_INITS)}, got {init!r}")
    model.requires_grad_(False)
    slots = [(n, m, p) for n, m in model.named_modules() if _matches(n, targets) and (p := lora_slot(m))]
    if not slots:
        raise InputError(f"no linear/attention weight found under module names containing {list(targets)}; "
                         "LoRA targets are substrings of module names, e.g. '.attn' or 'kv_mapper'")
    g = torch.Generator().manual_seed(seed)
    names = []
    for mname, module, pname in slots:
        w = getattr(module, pname)
        delta = LoRADelta(w.shape[0], w.shape[1], rank, alpha, device=w.device, dtype=w.dtype, generator=g,
                          init=init)
        parametrize.register_parametrization(module, pname, delta)
        names.append(f"{mname}.{pname}")
    return names


def _deltas(model: nn.Module) -> Iterator[tuple[str, LoRADelta]]:
    """(layer key, LoRADelta) in ``named_modules`` order (the order of :func:`lora_parameters`)."""
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


def set_lora_strength(model: nn.Module, strength: float) -> None:
    """Scale every LoRA delta of ``model`` by ``strength`` (1.0 = as trained, 0 = off)."""
    for _, d in _deltas(model):
        d.strength = float(strength)


def add_delta_(weight: torch.Tensor, delta: torch.Tensor) -> None:
    """``weight += delta`` in place, summed in float32 and rounded once to the weight's dtype."""
    with torch.no_grad():
        weight.copy_((weight.float() + delta.to(weight.device, torch.float32)).to(weight.dtype))


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA delta into its weight (float32 sum) and remove the parametrizations (in place)."""
    for mname, module in list(model.named_modules()):
        for pname in WEIGHT_NAMES:
            if not parametrize.is_parametrized(module, pname):
                continue
            plist = module.parametrizations[pname]
            with torch.no_grad():
                delta = sum((d.delta().float() for d in plist if isinstance(d, LoRADelta) and d.enabled),
                            torch.zeros(()))
            parametrize.remove_parametrizations(module, pname, leave_parametrized=False)
            add_delta_(getattr(module, pname), delta)
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
