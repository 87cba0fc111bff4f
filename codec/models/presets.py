"""Which named preset weights belong to: the one place presets are inferred.

Three views of the same question: :func:`infer_preset_of` compares every key and shape of a state dict
with each preset's model; :func:`preset_from_shapes` checks the one tensor shape that tells the official
``lite`` and ``big`` files apart (enough for a file header, read without loading the tensors);
:func:`preset_name_of` names the preset a config equals (explicit kwargs from a sidecar or diffusers).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Mapping, Sequence

import torch

from cascadekit.codec.errors import WeightsError

OPTIONAL_SUFFIXES = (".num_batches_tracked",)

#: The tensor whose first dimension tells lite from big in an official file: component -> (key, {dim0: preset}).
FILE_SIGNATURES = {
    "stage_b": ("down_downscalers.1.1.weight", {640: "big", 576: "lite"}),
    "stage_c": ("clip_txt_mapper.weight", {2048: "big", 1536: "lite"}),
}


def preset_from_shapes(shapes: Mapping[str, Sequence[int]], component: str, named: str | None, label: str,
                       fix_hint: str) -> str:
    """The preset of an official ``component`` file whose tensor shapes are ``shapes`` (key -> shape).

    ``named``: the preset the file name says (checked against the shapes). Components with one official
    size are ``'official'``. ``label`` names the file in errors; ``fix_hint`` says how to describe an
    unknown size. A missing signature key, an unknown size or a name/shape mismatch is a WeightsError.
    """
    if component not in FILE_SIGNATURES:
        return "official"
    key, table = FILE_SIGNATURES[component]
    shape = shapes.get(key)
    if shape is None:
        raise WeightsError(f"{label}: has no {key!r}; it is not an official {component} checkpoint")
    actual = table.get(int(shape[0]))
    if actual is None:
        raise WeightsError(
            f"{label}: {key} has shape {list(shape)}, which is neither the lite nor the big {component}; {fix_hint}"
        )
    if actual != named:
        raise WeightsError(f"{label}: the file name says {named} but its shapes are those of the {actual} {component}")
    return actual


def preset_name_of(cfg) -> str:
    """The first preset of ``type(cfg).PRESETS`` whose config equals ``cfg`` field for field, else ``'custom'``."""
    cfg_cls = type(cfg)
    same = [n for n in cfg_cls.PRESETS if cfg_cls.preset(n).kwargs() == cfg.kwargs()]
    return same[0] if same else "custom"


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
