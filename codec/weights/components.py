"""Build one network of a resolved :class:`~cascadekit.codec.weights.sources.WeightSet`.

The config comes from the weight set (sidecar / diffusers ``config.json`` kwargs, else the preset its file
names say), the model is created on the meta device and the file's tensors are assigned to it, converted
to ``dtype`` while reading (:func:`load_weights`), so the weights are never held twice.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cascadekit.codec.errors import InputError
from cascadekit.codec.models.effnet import EfficientNetEncoder, EfficientNetEncoderConfig
from cascadekit.codec.models.presets import preset_name_of
from cascadekit.codec.models.previewer import Previewer, PreviewerConfig
from cascadekit.codec.models.stage_a import StageA, StageAConfig
from cascadekit.codec.models.stage_b import StageB, StageBConfig
from cascadekit.codec.models.stage_c import StageC, StageCConfig
from cascadekit.codec.weights.assign import build
from cascadekit.codec.weights.load import load_weights

# component -> (model class, config class, preset used when the weight set names none)
COMPONENTS: dict[str, tuple[type[nn.Module], Any, str]] = {
    "stage_a": (StageA, StageAConfig, "official"),
    "effnet": (EfficientNetEncoder, EfficientNetEncoderConfig, "official"),
    "previewer": (Previewer, PreviewerConfig, "official"),
    "stage_b": (StageB, StageBConfig, "lite"),
    "stage_c": (StageC, StageCConfig, "lite"),
}


def component_config(ws, component: str, preset: str | None = None) -> tuple[Any, str]:
    """``(config, preset name)`` of ``component`` in weight set ``ws``.

    Constructor kwargs carried by the weight set win (the preset name is then the preset they equal, or
    ``'custom'``); else the preset the weight set names (from official file names); else ``preset``; else
    the component's default (``official`` / ``lite``).
    """
    if component not in COMPONENTS:
        raise InputError(f"unknown component {component!r}; choose one of {', '.join(COMPONENTS)}")
    _, cfg_cls, default = COMPONENTS[component]
    kwargs = ws.stage_a_kwargs() if component == "stage_a" else ws.model_kwargs.get(component)
    if kwargs is not None:
        cfg = cfg_cls(**kwargs)
        return cfg, preset_name_of(cfg)
    name = ws.presets.get(component) or preset or default
    return cfg_cls.preset(name), name


def load_component(ws, component: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   preset: str | None = None) -> tuple[nn.Module, str]:
    """``(model in eval mode, preset name)``: ``component``'s file in ``ws`` built on the meta device."""
    model_cls, _, _ = COMPONENTS.get(component, (None, None, None))
    cfg, name = component_config(ws, component, preset)
    path = ws.path(component)
    state = load_weights(path, kind=component, dtype=dtype)  # converted while reading: never two full copies
    model = build(lambda: model_cls.from_config(cfg), state, device=device, dtype=dtype, name=f"{component} ({path})")
    return model, name
