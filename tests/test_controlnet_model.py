"""ControlNet: the three official presets equal the released checkpoints (meta device); official init; the list."""
from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import load_manifest

from cascadekit.generator import ControlNet, ControlNetConfig, StageC, StageCConfig
from cascadekit.generator.controlnet import init_effnet_backbone, resblock_call_channels, scaled_proj_blocks

OPTIONAL = (".num_batches_tracked",)


@pytest.mark.parametrize("name", ["canny", "inpainting", "super_resolution"])
def test_official_controlnet_matches_manifest(name):
    ref = load_manifest(f"controlnet_{name}")
    cfg = ControlNetConfig.preset(name)
    official = {k: v for k, v in cfg.kwargs().items() if k != "large_widths"}
    want_kwargs = dict(ref["constructor_kwargs"])
    want_kwargs.setdefault("bottleneck_mode", "effnet")
    assert official == want_kwargs
    with torch.device("meta"):
        model = ControlNet.from_config(cfg)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    want = [(k, s) for k, s in ref["state_dict"]]
    assert [k for k, _ in got] == [k for k, _ in want]
    assert dict(got) == dict(want)
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]


def test_official_init_zeroes_the_last_projection_conv():
    net = ControlNet(c_in=4, c_proj=8, proj_blocks=[0, 3], bottleneck_mode="simple")
    for proj in net.projections:
        assert torch.count_nonzero(proj[-1].weight) == 0
        assert torch.count_nonzero(proj[0].weight) > 0
    out = net(torch.rand(2, 4, 5, 6))
    assert [o is None for o in out] == [False, True, True, False]
    assert out[0].shape == (2, 8, 5, 6) and torch.count_nonzero(out[0]) == 0


def test_effnet_controlnet_output_stride_and_channel_copy():
    net = ControlNet(c_in=4, c_proj=8, proj_blocks=[1], bottleneck_mode="effnet").eval()
    out = net(torch.rand(1, 4, 64, 96))
    assert out[0] is None and out[1].shape == (1, 8, 2, 3)
    features = torchvision.models.efficientnet_v2_s(weights=None).features.state_dict()
    imagenet = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in features.items()}
    init_effnet_backbone(net, imagenet)
    first = net.backbone[0][0].weight
    assert torch.equal(first[:, :3], imagenet["0.0.weight"]) and torch.count_nonzero(first[:, 3]) == 0
    small = ControlNet(c_in=1, c_proj=8, proj_blocks=[0])
    init_effnet_backbone(small, imagenet)
    assert torch.equal(small.backbone[0][0].weight, imagenet["0.0.weight"][:, :1])


def test_resblock_calls_and_scaled_blocks():
    with torch.device("meta"):
        big = StageC.from_config(StageCConfig.preset("big"))
        lite = StageC.from_config(StageCConfig.preset("lite"))
    assert len(resblock_call_channels(big)) == 64 and set(resblock_call_channels(big)) == {2048}
    assert len(resblock_call_channels(lite)) == 32
    assert scaled_proj_blocks(64) == [0, 4, 8, 12, 51, 55, 59, 63]
    assert scaled_proj_blocks(32) == [0, 2, 4, 6, 25, 27, 29, 31]


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="bottleneck_mode"):
        ControlNet(c_in=1, proj_blocks=[0], bottleneck_mode="huge")
    with pytest.raises(ValueError, match="proj_blocks"):
        ControlNet(c_in=1, proj_blocks=[])
    from cascadekit.codec.errors import InputError

    net = ControlNet(c_in=4, c_proj=8, proj_blocks=[0], bottleneck_mode="simple")
    with pytest.raises(InputError, match=r"\(B, 4, H, W\)"):
        net(torch.rand(1, 3, 8, 8))
