"""The loading steps of ``Codec.from_pretrained``: which models to read, where they are, building them.

Kept apart from :mod:`cascadekit.codec.codec` so the codec module holds the API and this one the
weight-set plumbing (resolve, per-stage dtype, meta-device build, text encoder, empty caption).
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import torch

from cascadekit.codec.codec_text import load_empty_clip
from cascadekit.codec.errors import InputError
from cascadekit.codec.precision import StageDtypes, dtype_name
from cascadekit.codec.text import TextEncoder
from cascadekit.codec.weights import components as weight_components  # looked up per call (tests spy on it)
from cascadekit.codec.weights.sources import WeightSet, resolve_source

#: The models a codec can hold, in load order; ``Codec.from_pretrained(components=...)`` picks a subset.
CODEC_COMPONENTS = ("stage_a", "effnet", "stage_b", "previewer")


def select_components(components: Sequence[str] | str | None, previewer: bool) -> tuple[set[str], tuple[str, ...]]:
    """``(models to load when found, models that must exist)`` for ``from_pretrained(components=, previewer=)``."""
    if components is None:
        load_set = set(CODEC_COMPONENTS) if previewer else set(CODEC_COMPONENTS[:3])
        return load_set, CODEC_COMPONENTS[:3]  # the previewer is optional (diffusers has none)
    if isinstance(components, str):
        components = (components,)
    load_set = set(components)
    unknown = sorted(load_set - set(CODEC_COMPONENTS))
    if unknown or not load_set:
        raise InputError(f"components must be a non-empty subset of {CODEC_COMPONENTS}, got {tuple(components)}")
    if "previewer" in load_set and not previewer:
        raise InputError("components lists 'previewer' but previewer=False; drop one of them")
    return load_set, tuple(c for c in CODEC_COMPONENTS if c in load_set)


def weight_set_for(source: Any, stage_b: str, need: tuple[str, ...]) -> WeightSet:
    """``source`` resolved (:func:`resolve_source`), or a ready :class:`WeightSet` checked to hold ``need``."""
    if isinstance(source, WeightSet):  # resolved by the caller (e.g. the text-to-image pipeline)
        for c in need:
            source.path(c)  # a WeightsError naming a required component it lacks
        return source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny-weights warning is re-issued by the caller, once
        return resolve_source(source, stage_b=stage_b, need=need)


def warn_about(ws: WeightSet, load_set: set[str], dts: StageDtypes, stacklevel: int) -> None:
    """The tiny-weights warning, and the one for a Stage B that cannot run in the requested float16."""
    if ws.tiny:
        warnings.warn(f"{ws.weights_dir}: {ws.warning}", stacklevel=stacklevel + 1)
    if "stage_b" in load_set and dts.stage_b != dts.requested:
        warnings.warn(
            f"dtype={dtype_name(dts.requested)} requested: Stage B runs in {dtype_name(dts.stage_b)} instead "
            "(it overflows in float16; see cascadekit.codec.precision)", stacklevel=stacklevel + 1)


def load_models(ws: WeightSet, load_set: set[str], dts: StageDtypes, device: torch.device
                ) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """``(component -> model, component -> preset)`` for every component asked for and found, each in its
    stage dtype (the required ones were checked when ``ws`` was resolved)."""
    models, presets = {}, {}
    for c in CODEC_COMPONENTS:
        if c in load_set and getattr(ws, c) is not None:
            models[c], presets[c] = weight_components.load_component(ws, c, device=device, dtype=getattr(dts, c))
    sa = models.get("stage_a")
    if sa is not None and not ws.scale_in_model and "stage_a" not in ws.model_kwargs:
        sa.scale_factor = 1.0  # defensive: diffusers always has kwargs
    return models, presets


def text_side(ws: WeightSet, stage_b, text_encoder: Any, device: torch.device
              ) -> tuple[Any, torch.Tensor | None, str | None]:
    """``(text encoder, empty-caption pooled embedding or None, why it is missing)`` for a Stage B.

    ``text_encoder``: a ``TextEncoder``, a folder / hub id to load one from, ``True`` (the one in the
    weights) or None. Without a Stage B nothing is read.
    """
    if stage_b is None:
        return text_encoder, None, None
    if isinstance(text_encoder, (str, os.PathLike)) or text_encoder is True:
        text_encoder = TextEncoder.from_pretrained(ws if text_encoder is True else text_encoder, device=device)
    empty, why = load_empty_clip(ws, stage_b.clip_mapper.in_features, text_encoder)
    return text_encoder, empty, why


__all__ = ["CODEC_COMPONENTS", "load_models", "select_components", "text_side", "warn_about", "weight_set_for"]
