"""A ControlNet training run (or one of its checkpoints) as a ControlNet source for sampling.

``controlnet_file_of(source)``: a run folder -> ``controlnet.safetensors`` of its newest **intact** checkpoint (the
``--resume`` rule, :func:`cascadekit.generator.checkpoint.run_checkpoint`, not only the ``latest`` pointer); a
``RUN/checkpoints/step_N`` folder -> its file (checked); anything else (file, weights folder, hub id) unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cascadekit.codec.errors import InputError
from cascadekit.generator.checkpoint import checkpoint_problem, run_checkpoint

WEIGHTS_NAME = "controlnet.safetensors"


def _file_in(folder: Path) -> Path:
    f = folder / WEIGHTS_NAME
    if not f.is_file():
        raise InputError(f"{folder} is a training checkpoint without {WEIGHTS_NAME} (not a ControlNet run; "
                         "use --stage-c-weights / --lora for Stage C runs)")
    return f


def controlnet_file_of(source: Any) -> Any:
    """The ControlNet file of a run / checkpoint folder ``source``; other sources are returned unchanged."""
    if source is None:
        return None
    p = Path(str(source)).expanduser()
    if p.is_dir() and (p / "checkpoints").is_dir():
        return _file_in(run_checkpoint(p, "ControlNet run"))
    if p.is_dir() and (p / "meta.json").is_file() and not (p / "controlnet").is_dir():
        problem = checkpoint_problem(p)
        if problem is not None:
            raise InputError(f"checkpoint {p} is not intact: {problem}")
        return _file_in(p)
    return source


__all__ = ["controlnet_file_of"]
