"""Locate and safely read the backbone weights the metrics need; never download anything.

Search order for a file name: `weights_dir` (if given, also its `checkpoints/` subfolder), then torch's hub
checkpoint cache (`$TORCH_HOME/hub/checkpoints`, by default `~/.cache/torch/hub/checkpoints`), which is where
torchvision and torch-fidelity put these files when they download them on a connected machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import BadWeightsError, MissingWeightsError


@dataclass(frozen=True)
class BackboneFile:
    """One weight file a metric needs: its exact name, what it is for and where it is published."""

    filename: str
    purpose: str
    url: str


ALEXNET = BackboneFile(
    "alexnet-owt-7be5be79.pth",
    "LPIPS AlexNet backbone (torchvision ImageNet weights)",
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
)
VGG16 = BackboneFile(
    "vgg16-397923af.pth",
    "LPIPS VGG16 backbone (torchvision ImageNet weights)",
    "https://download.pytorch.org/models/vgg16-397923af.pth",
)
INCEPTION = BackboneFile(
    "weights-inception-2015-12-05-6726825d.pth",
    "FID Inception-v3 (torch-fidelity's port of the TF 2015-12-05 graph)",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)


def hub_checkpoints_dir() -> Path:
    """torch's hub checkpoint cache: `$TORCH_HOME/hub/checkpoints` (read at call time, not import time)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for backbone weights, in order."""
    dirs = []
    if weights_dir is not None:
        dirs += [Path(weights_dir), Path(weights_dir) / "checkpoints"]
    dirs.append(hub_checkpoints_dir())
    return dirs


def find_weights(file: BackboneFile, weights_dir: str | os.PathLike | None = None) -> Path:
    """Return the path of `file` in `weights_dir` or the torch hub cache.

    Raises MissingWeightsError naming the file, the folders searched, where to put it and where to get it.
    """
    if weights_dir is not None and not Path(weights_dir).is_dir():
        raise MissingWeightsError(f"--weights-dir {weights_dir} is not a folder")
    dirs = search_dirs(weights_dir)
    for d in dirs:
        p = d / file.filename
        if p.is_file():
            return p
    target = dirs[0] if weights_dir is not None else hub_checkpoints_dir()
    raise MissingWeightsError(
        f"{file.purpose}: weight file '{file.filename}' not found (searched: {', '.join(str(d) for d in dirs)}). "
        f"Nothing is downloaded. Put '{file.filename}' into {target} "
        f"(or pass --weights-dir / weights_dir=FOLDER containing it). It is published at {file.url}."
    )


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torch state dict with `weights_only=True` onto the CPU (no arbitrary unpickling)."""
    path = Path(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated download, wrong format, pickled code
        raise BadWeightsError(
            f"cannot read weight file {path} as a plain tensor state dict ({type(e).__name__}: {e}); "
            f"it may be truncated or not a weights file: delete it and fetch it again"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadWeightsError(f"weight file {path} does not hold a flat name -> tensor state dict")
    return state
