"""LPIPS (Zhang et al. 2018) with the `lpips` package, AlexNet or VGG16 trunk, without any download.

The `lpips` package normally fetches the torchvision ImageNet backbone itself and reads its calibrated linear
layers with a bare `torch.load`. Here the network is built with a random trunk (`pnet_rand=True`) and no linear
weights, then both are loaded with `torch.load(weights_only=True)`:
- the trunk from torchvision's file (`alexnet-owt-7be5be79.pth` / `vgg16-397923af.pth`) found in `weights_dir` or
  torch's hub cache (only the `features.*` tensors are used; a file holding just those is accepted);
- the linear layers from the files shipped inside the pip package (`lpips/weights/v0.1/{alex,vgg}.pth`).

Trap handled: LPIPS networks expect inputs in [-1,1]; a [0,1] image passes silently with a wrong value. This
class takes [0,1] images, maps them to [-1,1] itself, and rejects inputs outside [0,1].
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import BadWeightsError, MetricInputError, MissingWeightsError
from .weights import ALEXNET, VGG16, BackboneFile, find_weights, load_state

NETS: dict[str, tuple[BackboneFile, str]] = {"alex": (ALEXNET, "alex.pth"), "vgg": (VGG16, "vgg.pth")}
RANGE_SLACK = 1e-4


def linear_weights_path(net: str) -> Path:
    """The calibrated v0.1 linear-layer weights shipped inside the `lpips` pip package."""
    import lpips

    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / NETS[net][1]


def load_trunk(trunk: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Copy torchvision `features.<i>.*` tensors into lpips' sliced trunk (`slice<k>.<i>.*`), exactly."""
    own = trunk.state_dict()  # keys like "slice1.0.weight"; the child index <i> is torchvision's features index
    mapped, missing = {}, []
    for key in own:
        _, idx, param = key.split(".", 2)
        src = f"features.{idx}.{param}"
        if src not in state:
            missing.append(src)
            continue
        if state[src].shape != own[key].shape:
            raise BadWeightsError(
                f"weight file {source}: {src} has shape {tuple(state[src].shape)}, expected {tuple(own[key].shape)} "
                f"(is this the right backbone file?)")
        mapped[key] = state[src]
    if missing:
        raise BadWeightsError(f"weight file {source} lacks backbone tensors {missing[:4]}"
                              f"{' ...' if len(missing) > 4 else ''} (is this the right backbone file?)")
    trunk.load_state_dict(mapped, strict=True)


class LPIPSMetric(nn.Module):
    """LPIPS distance per image pair.

    net: "alex" (the standard choice for evaluation) or "vgg". weights_dir: folder holding the torchvision
    backbone file (else torch's hub cache is searched). Nothing is downloaded; a missing file raises
    MissingWeightsError naming it.
    """

    def __init__(self, net: str = "alex", *, weights_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__()
        if net not in NETS:
            raise MetricInputError(f"LPIPS net must be one of {sorted(NETS)}, got {net!r}")
        backbone_file, _ = NETS[net]
        trunk_path = find_weights(backbone_file, weights_dir)
        lin_path = linear_weights_path(net)
        if not lin_path.is_file():
            raise MissingWeightsError(f"LPIPS linear-layer weights {lin_path} are missing from the installed `lpips` "
                                      f"package; reinstall it (pip install --force-reinstall lpips)")
        import lpips

        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
        load_trunk(model.net, load_state(trunk_path), trunk_path)
        lin_state = load_state(lin_path)
        lin_keys = {k for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins.")}
        if set(lin_state) != lin_keys:
            raise BadWeightsError(f"{lin_path}: expected keys {sorted(lin_keys)}, got {sorted(lin_state)}")
        model.load_state_dict(lin_state, strict=False)  # lins.<i> share these modules
        self.net_name = net
        self.model = model.eval().requires_grad_(False).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """preds, target: (B,3,H,W) float in [0,1] (any device). Returns (B,) float64 LPIPS distances (0 = same)."""
        for name, x in (("reconstruction", preds), ("original", target)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise MetricInputError(f"LPIPS: {name} must be a float (B,3,H,W) tensor in [0,1], got {shape}")
            lo, hi = float(x.min()), float(x.max())
            if not (lo >= -RANGE_SLACK and hi <= 1 + RANGE_SLACK):
                raise MetricInputError(
                    f"LPIPS: {name} values span [{lo:.4g}, {hi:.4g}], expected images in [0,1]. This metric maps "
                    f"[0,1] to the [-1,1] the network needs itself; if your images are already in [-1,1], pass "
                    f"(x + 1) / 2")
        if preds.shape != target.shape:
            raise MetricInputError(f"LPIPS: reconstruction shape {tuple(preds.shape)} != original "
                                   f"{tuple(target.shape)}")
        dev = self.device
        p = preds.to(dev, torch.float32) * 2 - 1  # [0,1] -> [-1,1]
        t = target.to(dev, torch.float32) * 2 - 1
        try:
            d = self.model(p, t, normalize=False)
        except RuntimeError as e:
            if min(preds.shape[-2:]) < 64:  # the trunk's strides and pools leave nothing of tiny images
                raise MetricInputError(f"LPIPS ({self.net_name}) cannot measure {tuple(preds.shape[-2:])} images; "
                                       f"they are too small for the network ({e})") from e
            raise
        return d.reshape(-1).double().cpu()
