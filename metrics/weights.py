"""Locate, download (verified) and safely read the backbone weights the metrics need.

Search order for a file name: `weights_dir` (if given, also its `checkpoints/` subfolder), then torch's hub
checkpoint cache (`$TORCH_HOME/hub/checkpoints`, by default `~/.cache/torch/hub/checkpoints`), where torchvision
and torch-fidelity keep these files too. A file missing from the hub cache is downloaded there from its
published URL and checked against its published SHA-256 (the hash prefix in the file name, as torch.hub checks
it) before it is used (:mod:`.download`), unless offline (`--offline`, `CASCADEKIT_OFFLINE=1`, `HF_HUB_OFFLINE=1`,
`TRANSFORMERS_OFFLINE=1`) or an explicit `weights_dir` was given (a local folder is never filled behind your back).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .download import DownloadError, DownloadSettings, download_verified
from .errors import BadWeightsError, MissingWeightsError

HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")  # torch.hub's file naming: name-<sha256 prefix>.ext


@dataclass(frozen=True)
class BackboneFile:
    """One weight file a metric needs: its exact name, what it is for, where it is published and its
    published SHA-256 (full, or the prefix of 8+ hex digits in the file name; default: that prefix)."""

    filename: str
    purpose: str
    url: str
    sha256: str = ""

    def digest(self) -> str:
        """The SHA-256 (or published prefix) a download must match."""
        if self.sha256:
            return self.sha256
        m = HASH_IN_NAME.search(self.filename)
        if m is None:
            raise ValueError(f"{self.filename}: no SHA-256 given and none in the file name")
        return m.group(1)


ALEXNET = BackboneFile(
    "alexnet-owt-7be5be79.pth",
    "LPIPS AlexNet backbone (torchvision ImageNet weights)",
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "7be5be79",  # torchvision publishes the SHA-256 prefix in the name and checks it so (check_hash=True)
)
VGG16 = BackboneFile(
    "vgg16-397923af.pth",
    "LPIPS VGG16 backbone (torchvision ImageNet weights)",
    "https://download.pytorch.org/models/vgg16-397923af.pth",
    "397923af",
)
INCEPTION = BackboneFile(
    "weights-inception-2015-12-05-6726825d.pth",
    "FID Inception-v3 (torch-fidelity's port of the TF 2015-12-05 graph)",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "6726825d",  # torch-fidelity's file follows the same torch.hub naming (name-<sha256 prefix>.pth)
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


def find_weights(file: BackboneFile, weights_dir: str | os.PathLike | None = None,
                 download: DownloadSettings | None = None) -> Path:
    """Return the path of `file` in `weights_dir` or the torch hub cache, downloading it into the hub cache
    (verified) when it is in neither, no `weights_dir` was given and the network may be used.

    download: when files may be fetched (default: :meth:`DownloadSettings.from_env`, i.e. online unless an
    offline variable is set). Raises MissingWeightsError naming the file, the folders searched, where to put
    it and where to get it (a DownloadError, its subclass, when a download was tried and failed).
    """
    if weights_dir is not None and not Path(weights_dir).is_dir():
        raise MissingWeightsError(f"--weights-dir {weights_dir} is not a folder")
    dirs = search_dirs(weights_dir)
    for d in dirs:
        p = d / file.filename
        if p.is_file():
            return p
    settings = download or DownloadSettings.from_env()
    searched = ", ".join(str(d) for d in dirs)
    why = settings.offline_reason()
    if weights_dir is None and why is None:
        try:
            return download_verified(file.url, hub_checkpoints_dir() / file.filename, file.digest(), settings)
        except DownloadError as e:
            raise DownloadError(f"{file.purpose}: '{file.filename}' not found (searched: {searched}) and {e}. "
                                f"Put '{file.filename}' into {hub_checkpoints_dir()} or pass --weights-dir.") from None
    target = dirs[0] if weights_dir is not None else hub_checkpoints_dir()
    not_fetched = f"Nothing is downloaded ({why})" if why else "Nothing is downloaded into a --weights-dir folder"
    raise MissingWeightsError(
        f"{file.purpose}: weight file '{file.filename}' not found (searched: {searched}). "
        f"{not_fetched}. Put '{file.filename}' into {target} "
        f"(or pass --weights-dir / weights_dir=FOLDER containing it). It is published at {file.url}."
    )


def backbones_for(metrics, lpips_net: str = "alex") -> dict[str, BackboneFile]:
    """metric name -> the backbone file it needs, for the metrics of ``metrics`` that need one."""
    nets = {"alex": ALEXNET, "vgg": VGG16}
    need = {}
    if "lpips" in metrics:
        need["lpips"] = nets[lpips_net]
    if "fid" in metrics:
        need["fid"] = INCEPTION
    return need


def available_metrics(metrics, *, lpips_net: str = "alex", weights_dir: str | os.PathLike | None = None,
                      download: DownloadSettings | None = None) -> tuple[tuple[str, ...], dict[str, str]]:
    """Split ``metrics`` into those whose backbone is on disk (downloaded when allowed) and those skipped.

    Returns (kept metric names in order, {skipped metric: reason}). For a default metric list, where a
    metric that cannot be computed should be skipped with a reason rather than stop the run.
    """
    need = backbones_for(metrics, lpips_net)
    skipped = {}
    for name, file in need.items():
        try:
            find_weights(file, weights_dir, download)
        except MissingWeightsError as e:
            skipped[name] = str(e)
    return tuple(m for m in metrics if m not in skipped), skipped


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
