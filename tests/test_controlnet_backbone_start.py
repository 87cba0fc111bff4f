"""Where a new effnet ControlNet's backbone starts: torchvision's ImageNet EfficientNetV2-S weights from the torch hub
cache (or downloaded into it, hash-checked), else the Stable Cascade EfficientNet encoder's backbone; the run log
says which. The network is forbidden in every test (a failing or hanging download falls back at once)."""
from __future__ import annotations

import shutil
import socket
import time
import types
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from controlnet_train_helpers import block_images, config, make_store, stage_c_file
from generator_helpers import FixedEmpty

from cascadekit.codec.errors import InputError
from cascadekit.codec.models.effnet import EfficientNetEncoder
from cascadekit.generator import controlnet_imagenet
from cascadekit.generator.controlnet_imagenet import ImageNetWeights, imagenet_features
from cascadekit.generator.train_controlnet import controlnet_loop

# the file name torchvision's weights enum downloads to (and looks for in $TORCH_HOME/hub/checkpoints)
TV_NAME = Path(urlparse(torchvision.models.EfficientNet_V2_S_Weights.DEFAULT.url).path).name


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """TORCH_HOME in tmp, no offline variable set, and every socket connection refused (the attempts recorded)."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[:1])
        raise OSError("network forbidden in this test")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("CASCADEKIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return attempts


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("bb")
    torch.manual_seed(123)
    state = torchvision.models.efficientnet_v2_s().state_dict()  # random "ImageNet" weights, the full model
    weights = d / "tv" / TV_NAME
    weights.parent.mkdir()
    torch.save(state, weights)
    torch.manual_seed(7)
    encoder = types.SimpleNamespace(effnet=EfficientNetEncoder())  # a (random) Stable Cascade EfficientNet encoder
    return {"store": make_store(d / "s.zarr", block_images(d / "img", n=4), controls=("inpaint",)),
            "init": stage_c_file(d / "w"), "weights": weights, "state": state, "encoder": encoder}


def _loop(world, out: Path, **kw):
    logs: list[str] = []
    loop = controlnet_loop(world["store"], config("inpainting", bottleneck_mode="effnet", batch_size=4, **kw), out,
                           init=world["init"], device="cpu", text_encoder=FixedEmpty(),
                           image_encoder=world["encoder"], log=logs.append)
    loop.close()
    return loop, [m for m in logs if m.startswith("ControlNet backbone:")]


def _assert_backbone_is(net, features: dict) -> None:
    """The ControlNet's backbone equals ``features`` (RGB first conv copied into channels 0..2, the mask's zero)."""
    got = net.backbone.state_dict()
    assert set(got) == set(features)
    for k, v in features.items():
        if k == "0.0.weight":
            assert torch.equal(got[k][:, :3], v) and torch.count_nonzero(got[k][:, 3]) == 0
        else:
            assert torch.equal(got[k], v), k


def test_imagenet_weights_from_the_torch_cache(world, no_network, tmp_path):
    cache = tmp_path / "torch" / "hub" / "checkpoints" / TV_NAME
    cache.parent.mkdir(parents=True)
    shutil.copy(world["weights"], cache)
    loop, logs = _loop(world, tmp_path / "run")
    features = {k[len("features."):]: v for k, v in world["state"].items() if k.startswith("features.")}
    _assert_backbone_is(loop.model.controlnet, features)
    assert len(logs) == 1 and "ImageNet EfficientNetV2-S weights (torch hub cache" in logs[0], logs
    assert str(cache) in logs[0] and no_network == []  # a cached file: the network is never asked


def test_no_cache_and_no_network_falls_back_to_stable_cascade(world, no_network, tmp_path):
    t0 = time.perf_counter()
    features, why = imagenet_features()
    assert features is None and time.perf_counter() - t0 < 3, why  # a refused connection: no retries, no wait
    assert "not in the torch hub cache" in why and "could not be downloaded" in why and "network forbidden" in why
    assert no_network, "a download was not even tried"
    loop, logs = _loop(world, tmp_path / "run")
    sc = world["encoder"].effnet.backbone.state_dict()
    _assert_backbone_is(loop.model.controlnet, sc)
    assert len(logs) == 1 and "Stable Cascade EfficientNet encoder's backbone" in logs[0], logs
    assert "not from ImageNet" in logs[0] and "could not be downloaded" in logs[0], logs
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / TV_NAME).exists()
    with pytest.raises(InputError, match="backbone_init: imagenet, but .*could not be downloaded"):
        _loop(world, tmp_path / "strict", backbone_init="imagenet")


def test_a_hanging_network_falls_back_within_the_timeout(no_network, monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(5)
        raise OSError("gave up")

    monkeypatch.setattr(urllib.request, "urlopen", hang)
    monkeypatch.setattr(controlnet_imagenet, "CONNECT_TIMEOUT_S", 0.3)
    t0 = time.perf_counter()
    features, why = imagenet_features()
    assert features is None and time.perf_counter() - t0 < 2, why
    assert "no answer within 0.3 s" in why


def test_offline_never_touches_the_network(no_network, monkeypatch):
    monkeypatch.setenv("CASCADEKIT_OFFLINE", "1")
    features, why = imagenet_features()
    assert features is None and "CASCADEKIT_OFFLINE=1" in why and no_network == []


def test_download_into_the_cache_is_hash_checked(world, no_network, tmp_path):
    import hashlib

    digest = hashlib.sha256(world["weights"].read_bytes()).hexdigest()
    served = tmp_path / "mirror"
    served.mkdir()
    good = served / f"efficientnet_v2_s-{digest[:8]}.pth"
    bad = served / f"efficientnet_v2_s-{'0' * 8 if digest[:8] != '0' * 8 else '1' * 8}.pth"
    shutil.copy(world["weights"], good)
    shutil.copy(world["weights"], bad)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"

    features, why = imagenet_features(ImageNetWeights(bad.as_uri()))
    assert features is None and "does not start with the published" in why
    assert list(checkpoints.iterdir()) == []  # nothing kept, no temporary file left

    features, why = imagenet_features(ImageNetWeights(good.as_uri()))
    assert features is not None and why.startswith(f"downloaded from {good.as_uri()}"), why
    assert (checkpoints / good.name).read_bytes() == good.read_bytes()
    assert torch.equal(features["0.0.weight"], world["state"]["features.0.0.weight"])
    good.unlink()  # the second time it is the cached file
    assert imagenet_features(ImageNetWeights(good.as_uri()))[1].startswith("torch hub cache")


@pytest.mark.parametrize("content", ["garbage", "wrong_shapes", "pickled_module"])
def test_a_bad_cached_file_is_not_used(no_network, tmp_path, content):
    cache = tmp_path / "torch" / "hub" / "checkpoints" / TV_NAME
    cache.parent.mkdir(parents=True)
    if content == "garbage":
        cache.write_bytes(b"PK\x03\x04 truncated")
        expect = "cannot be read as weights"
    elif content == "wrong_shapes":
        torch.save({"features.0.0.weight": torch.zeros(1)}, cache)
        expect = "does not hold EfficientNetV2-S weights"
    else:
        torch.save(torch.nn.Linear(1, 1), cache)  # a pickled module: never unpickled
        expect = "cannot be read as weights"
    features, why = imagenet_features()
    assert features is None and expect in why and str(cache) in why, why
