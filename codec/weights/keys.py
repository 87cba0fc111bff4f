"""Official Stable Cascade key names <-> diffusers key names.

Rules (see ``shared/reference/manifests/diffusers_key_mapping.md``):

Stage B and Stage C (``kind`` ``'stage_b'`` / ``'stage_c'``), for every attention block prefix ``P``::

    P.attention.attn.in_proj_weight  [3C, C]  <->  P.attention.to_q.weight, to_k.weight, to_v.weight  [C, C] each
    P.attention.attn.in_proj_bias    [3C]     <->  P.attention.to_q.bias,   to_k.bias,   to_v.bias    [C]    each
    P.attention.attn.out_proj.weight [C, C]   <->  P.attention.to_out.0.weight
    P.attention.attn.out_proj.bias   [C]      <->  P.attention.to_out.0.bias

The packed projection is cut along dim 0 into three equal contiguous pieces in the order q, k, v
(and concatenated in that order on the way back).

Stage B only::

    clip_mapper.{weight,bias}  <->  clip_txt_pooled_mapper.{weight,bias}

Stage A (``'stage_a'``)::

    vquantizer.codebook.weight  <->  vquantizer.embedding.weight

Every other key keeps its name and shape. The EfficientNet encoder and the Previewer exist only in the
official format (diffusers has no counterpart), so their kinds (``'effnet'``, ``'previewer'``) map to
themselves. All functions work on ``meta`` tensors (only views/slices and ``torch.cat`` are used).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

from cascadekit.codec.errors import WeightsError

KINDS = ("stage_a", "stage_b", "stage_c", "effnet", "previewer")

_IN_W = ".attention.attn.in_proj_weight"
_IN_B = ".attention.attn.in_proj_bias"
_OUT = ".attention.attn.out_proj."
_D_OUT = ".attention.to_out.0."
_QKV = ("to_q", "to_k", "to_v")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def official_to_diffusers(sd: Mapping[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Rename an official state dict to diffusers names (``StableCascadeUNet`` / ``PaellaVQModel``).

    ``sd``: official keys -> tensors (any device, ``meta`` included). Returns a new dict; the q/k/v
    tensors are views (slices) of the packed ``in_proj`` tensors, nothing is copied.
    """
    _check_kind(kind)
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if kind in ("stage_b", "stage_c") and key.endswith((_IN_W, _IN_B)):
            prefix = key[: -len(_IN_W if key.endswith(_IN_W) else _IN_B)]
            suffix = "weight" if key.endswith(_IN_W) else "bias"
            if t.shape[0] % 3:
                raise WeightsError(f"{key}: packed q/k/v projection has {t.shape[0]} rows, not a multiple of 3")
            for name, piece in zip(_QKV, t.chunk(3, dim=0)):  # rows [0,C) q, [C,2C) k, [2C,3C) v
                out[f"{prefix}.attention.{name}.{suffix}"] = piece
        elif kind in ("stage_b", "stage_c") and _OUT in key:
            out[key.replace(_OUT, _D_OUT)] = t
        elif kind == "stage_b" and key.startswith("clip_mapper."):
            out["clip_txt_pooled_mapper." + key[len("clip_mapper."):]] = t
        elif kind == "stage_a" and key == "vquantizer.codebook.weight":
            out["vquantizer.embedding.weight"] = t
        else:
            out[key] = t
    return out


def diffusers_to_official(sd: Mapping[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Rename a diffusers state dict to official names; q/k/v are concatenated (dim 0, order q, k, v).

    Raises :class:`WeightsError` when an attention block lacks one of ``to_q``/``to_k``/``to_v``
    or their shapes differ.
    """
    _check_kind(kind)
    out: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (prefix, weight|bias) -> {to_q: t, ...}
    for key, t in sd.items():
        if kind in ("stage_b", "stage_c"):
            hit = None
            for name in _QKV:
                for suffix in ("weight", "bias"):
                    tail = f".attention.{name}.{suffix}"
                    if key.endswith(tail):
                        hit = (key[: -len(tail)], suffix, name)
            if hit is not None:
                pending.setdefault(hit[:2], {})[hit[2]] = t
                continue
            if _D_OUT in key:
                out[key.replace(_D_OUT, _OUT)] = t
                continue
        if kind == "stage_b" and key.startswith("clip_txt_pooled_mapper."):
            out["clip_mapper." + key[len("clip_txt_pooled_mapper."):]] = t
        elif kind == "stage_a" and key == "vquantizer.embedding.weight":
            out["vquantizer.codebook.weight"] = t
        else:
            out[key] = t
    for (prefix, suffix), parts in sorted(pending.items()):
        missing = [n for n in _QKV if n not in parts]
        if missing:
            raise WeightsError(
                f"diffusers attention block {prefix}.attention lacks {', '.join(missing)}.{suffix}; "
                "the file is incomplete or not a Stable Cascade UNet"
            )
        shapes = {tuple(parts[n].shape) for n in _QKV}
        if len(shapes) != 1:
            raise WeightsError(f"{prefix}.attention: to_q/to_k/to_v.{suffix} shapes differ: {sorted(shapes)}")
        name = _IN_W if suffix == "weight" else _IN_B
        out[prefix + name] = torch.cat([parts[n] for n in _QKV], dim=0)
    return out


def detect_format(keys: Iterable[str]) -> tuple[str, str]:
    """Guess ``(format, kind)`` from state-dict keys.

    format: ``'official'`` or ``'diffusers'``; kind: ``'stage_a'``, ``'stage_b'``, ``'stage_c'``,
    ``'effnet'`` or ``'previewer'``. The markers are the ones widely used loaders rely on:
    Stage A by ``vquantizer.codebook.weight`` (official) / ``vquantizer.embedding.weight`` (diffusers),
    Stage C by ``clip_txt_mapper.weight``, Stage B by ``clip_mapper.*`` (official) or
    ``effnet_mapper.*`` + ``clip_txt_pooled_mapper.*`` (diffusers), the EfficientNet encoder by
    ``backbone.1.0.block.0.1.*`` and the Previewer by ``blocks.11.*``.
    A Stage C without attention blocks has identical keys in both formats; it is reported as official.
    """
    keys = set(keys)
    if "vquantizer.codebook.weight" in keys:
        return "official", "stage_a"
    if "vquantizer.embedding.weight" in keys:
        return "diffusers", "stage_a"
    has_official_attn = any(k.endswith(_IN_W) for k in keys)
    has_diffusers_attn = any(k.endswith(".attention.to_q.weight") for k in keys)
    if "clip_txt_mapper.weight" in keys:
        return ("diffusers" if has_diffusers_attn and not has_official_attn else "official"), "stage_c"
    if "clip_mapper.weight" in keys:
        return "official", "stage_b"
    if any(k.startswith("effnet_mapper.") for k in keys):
        if "clip_txt_pooled_mapper.weight" in keys or has_diffusers_attn:
            return "diffusers", "stage_b"
        return "official", "stage_b"
    if any(k.startswith("backbone.1.0.block.0.1.") for k in keys):
        return "official", "effnet"
    if any(k.startswith("blocks.11.") for k in keys) and all(k.startswith("blocks.") for k in keys):
        return "official", "previewer"
    sample = ", ".join(sorted(keys)[:8]) or "(no keys)"
    raise WeightsError(
        "cannot tell which Stable Cascade model these weights belong to (no Stage A codebook, no "
        f"clip_txt_mapper / clip_mapper / effnet_mapper, no effnet backbone, no previewer blocks). First keys: {sample}"
    )


def to_official(sd: Mapping[str, torch.Tensor], kind: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Return ``(official_state_dict, kind)`` whatever the input format (detected from the keys)."""
    fmt, detected = detect_format(sd.keys())
    if kind is not None and kind != detected:
        raise WeightsError(f"expected {kind} weights but the keys look like {detected} ({fmt} format)")
    if fmt == "diffusers":
        return diffusers_to_official(sd, detected), detected
    return dict(sd), detected
