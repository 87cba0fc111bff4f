"""Write locally created (random, calibrated) backbone weight files under the exact names the metrics look for.

The numbers are not the published ones, but every loading and forward code path is the real one.
"""
from __future__ import annotations

import io
from pathlib import Path
from unittest import mock

import torch
import torchvision
from torch import nn

ALEX = "alexnet-owt-7be5be79.pth"
VGG = "vgg16-397923af.pth"
INCEPTION = "weights-inception-2015-12-05-6726825d.pth"


def write_alexnet(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    feats = torchvision.models.alexnet(weights=None).features
    path = folder / ALEX
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, path)
    return path


def write_vgg16(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    feats = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    path = folder / VGG
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, path)
    return path


def write_inception(folder: Path, seed: int = 0) -> Path:
    """Random Inception-v3 whose BatchNorm statistics are calibrated on one random batch, so activations keep
    a sane scale through the network and features of different images differ."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3 as FE

    torch.manual_seed(seed)
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with mock.patch.object(FE, "load_state_dict", lambda self, *a, **k: None):
        net = FE("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the running stats to that batch's statistics
        m.train()
    with torch.no_grad():
        net((torch.rand(2, 3, 64, 64) * 255).to(torch.uint8))
    path = folder / INCEPTION
    torch.save(net.state_dict(), path)
    return path


import pytest  # noqa: E402


_WRITTEN: dict[str, Path] = {}


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory) -> Path:
    """A folder with locally created AlexNet, VGG16 and Inception weight files, written once per session
    (test modules import this fixture separately, hence the cache). Read-only for tests."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _WRITTEN:
        d = tmp_path_factory.mktemp("backbones")
        write_alexnet(d)
        write_vgg16(d)
        write_inception(d)
        _WRITTEN[key] = d
    return _WRITTEN[key]


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    """Point torch's hub cache at an empty temporary folder so no real cache (or network) is ever used."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("CASCADEKIT_OFFLINE", "1")  # a missing backbone is not downloaded either
    return home
