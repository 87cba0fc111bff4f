"""Recognise which named preset a state dict belongs to, by comparing every key and shape."""
from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import torch

from cascadekit.codec.errors import WeightsError

OPTIONAL_SUFFIXES = (".num_batches_tracked",)


def infer_preset_of(model_cls, cfg_cls, state_dict: Mapping[str, torch.Tensor], label: str):
    """Return ``cfg_cls.preset(name)`` for the first preset in ``cfg_cls.PRESETS`` whose model (built on
    the meta device, so nothing is allocated) has exactly the keys and shapes of ``state_dict``
    (``num_batches_tracked`` optional). Raise :class:`WeightsError` when none fits."""
    got = {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith(OPTIONAL_SUFFIXES)}
    for name in cfg_cls.PRESETS:
        if dict(_preset_shapes(model_cls, cfg_cls, name)) == got:
            return cfg_cls.preset(name)
    hint = ""
    if any(".attention.to_q." in k for k in got) or "vquantizer.embedding.weight" in got:
        hint = " The keys look like a diffusers conversion; convert them to the official layout first."
    raise WeightsError(
        f"these weights ({len(got)} tensors) match no {label} preset ({', '.join(cfg_cls.PRESETS)}) key for key "
        f"and shape.{hint} Check that the file is an official {label} checkpoint of a supported size."
    )


@lru_cache(maxsize=32)
def _preset_shapes(model_cls, cfg_cls, name: str) -> tuple:
    """(key, shape) pairs of a preset's model, built once on the meta device (pure, so cached)."""
    with torch.device("meta"):
        model = model_cls.from_config(cfg_cls.preset(name))
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items() if not k.endswith(OPTIONAL_SUFFIXES))
