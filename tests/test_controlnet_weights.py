"""Loading ControlNets: files / folders / hub layout, config from the keys, clear errors, fit to Stage C."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import load_manifest
from controlnet_helpers import tiny_controlnet, write_controlnet
from safetensors.torch import save_file

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.weights.controlnet import (
    check_fits_stage_c,
    config_from_shapes,
    control_name,
    load_controlnet,
    resolve_controlnet,
)
from cascadekit.generator import StageC, StageCConfig


@pytest.fixture(scope="module")
def tiny_stage_c():
    return StageC.from_config(StageCConfig.preset("tiny")).eval()


@pytest.mark.parametrize("control", ["canny", "inpainting", "sr"])
def test_load_roundtrip_and_config_from_keys(tmp_path, control, tiny_stage_c):
    f = write_controlnet(tmp_path / "cn.safetensors", control)
    net, info = load_controlnet(f)
    ref = tiny_controlnet(control)
    assert info.control == control and info.config.c_in == ref.c_in and net.proj_blocks == ref.proj_blocks
    assert info.config.bottleneck_mode == ref.bottleneck_mode
    x = torch.rand(2, ref.c_in, 8, 8)
    with torch.no_grad():
        for a, b in zip(net(x), ref(x)):
            assert (a is None and b is None) or torch.equal(a, b)
    check_fits_stage_c(net, tiny_stage_c)
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_official_folder_and_hub_layouts(tmp_path, monkeypatch):
    write_controlnet(tmp_path / "w" / "controlnet" / "canny.safetensors", "canny")
    write_controlnet(tmp_path / "w" / "controlnet" / "inpainting.safetensors", "inpainting")
    assert resolve_controlnet(tmp_path / "w", "canny").name == "canny.safetensors"
    assert resolve_controlnet(tmp_path / "w", "inpaint").name == "inpainting.safetensors"
    with pytest.raises(InputError, match="several ControlNets"):
        resolve_controlnet(tmp_path / "w")
    with pytest.raises(WeightsError, match="super_resolution.safetensors"):
        resolve_controlnet(tmp_path / "w", "sr")
    flat = write_controlnet(tmp_path / "flat" / "super_resolution.safetensors", "sr")
    assert resolve_controlnet(tmp_path / "flat") == flat
    # a hub id is fetched as controlnet/<name>.safetensors (here from a fake hub download)
    calls = []

    def fake_download(repo, filename, **kw):
        calls.append((repo, filename, kw.get("local_files_only")))
        return str(tmp_path / "w" / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    net, info = load_controlnet("stabilityai/stable-cascade", "canny")
    assert calls == [("stabilityai/stable-cascade", "controlnet/canny.safetensors", True)] and info.control == "canny"


def test_official_shapes_give_the_official_config():
    for name, mode, c_in in [("canny", "effnet", 1), ("inpainting", "effnet", 4), ("super_resolution", "large", 16)]:
        shapes = dict(load_manifest(f"controlnet_{name}")["state_dict"])
        cfg = config_from_shapes(shapes)
        assert (cfg.bottleneck_mode, cfg.c_in, cfg.c_proj) == (mode, c_in, 2048)
        assert cfg.proj_blocks == [0, 4, 8, 12, 51, 55, 59, 63]
        if mode == "large":
            assert cfg.large_widths == [16384, 1024, 1280]


def test_clear_errors(tmp_path, tiny_stage_c):
    with pytest.raises(InputError, match="unknown control"):
        control_name("depth")
    with pytest.raises(WeightsError, match="not found"):
        load_controlnet(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        load_controlnet(bad)
    other = tmp_path / "stage_c_like.safetensors"
    save_file({"clip_txt_mapper.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(WeightsError, match="not a Stable Cascade ControlNet"):
        load_controlnet(other)
    canny = write_controlnet(tmp_path / "canny.safetensors", "canny")
    with pytest.raises(WeightsError, match="is a canny ControlNet"):
        load_controlnet(canny, "inpainting")
    nometa = write_controlnet(tmp_path / "nometa.safetensors", "canny", metadata=False)
    with pytest.raises(WeightsError, match="no proj_blocks metadata"):
        load_controlnet(nometa)
    net, _ = load_controlnet(nometa, proj_blocks=[1, 3, 5])
    check_fits_stage_c(net, tiny_stage_c)
    # made for another Stage C: wrong width, or slots past the last ResBlock call
    wide, _ = load_controlnet(write_controlnet(tmp_path / "w.safetensors", "canny", c_proj=48))
    with pytest.raises(WeightsError, match="projects to 48 channels"):
        check_fits_stage_c(wide, tiny_stage_c)
    far, _ = load_controlnet(write_controlnet(tmp_path / "f.safetensors", "canny", proj_blocks=[1, 12]))
    with pytest.raises(WeightsError, match=r"ResBlock calls \[12\]"):
        check_fits_stage_c(far, tiny_stage_c)


def test_official_controlnet_does_not_fit_lite_stage_c(tmp_path):
    """Real shapes (random values) of the released canny file vs the 1B Stage C: c_proj 2048 vs 1536, before sampling."""
    ref = load_manifest("controlnet_canny")
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) * 0.01 if s else torch.zeros((), dtype=torch.long)
             for k, s in ref["state_dict"]}
    f = tmp_path / "controlnet" / "canny.safetensors"
    f.parent.mkdir()
    save_file(state, str(f))
    net, info = load_controlnet(tmp_path, "canny", dtype=torch.bfloat16)
    assert info.config.kwargs() == {**ref["constructor_kwargs"], "bottleneck_mode": "effnet",
                                    "large_widths": [16384, 1024, 1280]}
    assert sum(p.numel() for p in net.parameters()) == ref["num_parameters"]
    assert next(net.parameters()).dtype == torch.bfloat16
    with torch.device("meta"):
        lite = StageC.from_config(StageCConfig.preset("lite"))
        big = StageC.from_config(StageCConfig.preset("big"))
    check_fits_stage_c(net, big)
    with pytest.raises(WeightsError, match="3.6B Stage C"):
        check_fits_stage_c(net, lite)
    assert json.dumps(info.config.proj_blocks) == "[0, 4, 8, 12, 51, 55, 59, 63]"
