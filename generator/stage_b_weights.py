"""Fine-tuned Stage B weights for a :class:`~cascadekit.codec.codec.Codec`: ``--stage-b-weights RUN_OR_FILE [--ema]``.

``RUN_OR_FILE`` is a Stage B training run (its newest intact checkpoint), one checkpoint folder
(``RUN/checkpoints/step_N``: its ``stage_b[_lite].safetensors``, or ``ema.safetensors`` with ``ema``), or a
Stage B weights file in the official (or diffusers) layout. The weights must fit the codec's Stage B
(same preset): a lite file into a big decoder is an error naming both.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.models.stage_b import StageB, infer_preset
from cascadekit.codec.weights.assign import load_into
from cascadekit.codec.weights.load import load_weights
from cascadekit.generator.checkpoint import META, checkpoint_weights, run_checkpoint


def stage_b_weights_file(path: str | Path, ema: bool = False) -> Path:
    """The weights file ``path`` names (run folder -> newest intact checkpoint -> its Stage B or EMA file)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"--stage-b-weights {p} does not exist")
    p = run_checkpoint(p)  # a run folder: its newest intact checkpoint
    if p.is_dir() and (p / META).is_file():
        return checkpoint_weights(p, ema, refuse=lambda name: None if name.startswith("stage_b") else
                                  f"{p} is not a Stage B checkpoint (it holds {name or 'no weights'})")
    if ema:
        raise InputError("--ema needs a training run or checkpoint folder (with ema.safetensors)")
    if p.is_dir():
        raise InputError(f"--stage-b-weights {p} is a folder but neither a training run nor a checkpoint; give the "
                         "run, RUN/checkpoints/step_N or a .safetensors file")
    return p


def fine_tuned_stage_b(stage_b: nn.Module, path: str | Path, ema: bool = False) -> tuple[nn.Module, Path]:
    """A second Stage B like ``stage_b`` (same architecture, dtype, device; eval, frozen) holding the weights at
    ``path``; ``stage_b`` itself is untouched (so base and fine-tuned decoders can be compared)."""
    f = stage_b_weights_file(path, ema)
    ref = next(stage_b.parameters())
    state = load_weights(f, dtype=ref.dtype, kind="stage_b")
    module = _empty_like(stage_b)
    try:
        load_into(module, state, device=ref.device, dtype=ref.dtype, name="Stage B")
    except WeightsError as e:
        raise WeightsError(f"{f} does not fit the loaded Stage B (another preset? pass --stage-b lite|big to match "
                           f"the file): {e}") from None
    return module.eval().requires_grad_(False), f


def _empty_like(stage_b: nn.Module) -> nn.Module:
    """The same architecture on the meta device (its preset from its keys and shapes; else a deep copy)."""
    try:
        cfg = infer_preset(stage_b.state_dict())
    except WeightsError:  # a custom architecture: copy it (the copy's weights are overwritten)
        return copy.deepcopy(stage_b)
    with torch.device("meta"):
        return StageB.from_config(cfg)


def use_stage_b_weights(codec, path: str | Path, ema: bool = False) -> Path:
    """Replace ``codec.stage_b`` by the fine-tuned weights at ``path``; returns the file used (also recorded
    in the codec's identity)."""
    codec._require("stage_b")
    module, f = fine_tuned_stage_b(codec.stage_b, path, ema)
    codec.stage_b = module
    codec.files["stage_b"] = f
    codec._identity = None  # recomputed with the new file's sha256
    return f
