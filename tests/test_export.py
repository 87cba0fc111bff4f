"""`cascadekit export`: Stage C / Stage B to a diffusers folder that diffusers' StableCascadeUNet loads and that
computes what ours computes; to the official single file (official keys, release names, bf16); ControlNet
official only; runs, checkpoints and EMA as sources; an earlier export is refused without --overwrite."""
from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from _tiny_weights import tiny_weights_dir
from controlnet_helpers import write_controlnet
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cascadekit.cli.main import main
from cascadekit.codec.errors import InputError, OutputError, WeightsError
from cascadekit.codec.models.stage_b import StageB, StageBConfig
from cascadekit.codec.models.stage_c import StageC, StageCConfig
from cascadekit.codec.weights.controlnet import load_controlnet
from cascadekit.codec.weights.load import load_weights
from cascadekit.generator.checkpoint import save_checkpoint
from cascadekit.generator.export import export_weights

diffusers = pytest.importorskip("diffusers")


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random and non-zero (the official inits zero some outputs; every branch must count)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (1 / math.sqrt(fan_in) if p.dim() > 1 else 0.2))
    return model.eval()


@pytest.fixture(scope="module")
def stage_c():
    return _randomised(StageC.from_config(StageCConfig.preset("tiny")), 0)


@pytest.fixture(scope="module")
def stage_b():
    return _randomised(StageB.from_config(StageBConfig.preset("tiny")), 1)


def _file(tmp_path, name, model) -> str:
    p = tmp_path / name
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p))
    return str(p)


def _stage_c_inputs(seed=3, n=2):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(n, 16, 8, 8, generator=g), r=torch.rand(n, generator=g),
                clip_text=torch.randn(n, 5, 32, generator=g), clip_pooled=torch.randn(n, 1, 32, generator=g),
                clip_img=torch.randn(n, 1, 24, generator=g))


def test_stage_c_to_diffusers_loads_and_matches(tmp_path, stage_c):
    src = _file(tmp_path, "stage_c_lite.safetensors", stage_c)
    out = tmp_path / "prior"
    result = export_weights(src, out, "diffusers")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors", "export.json"]
    assert result.kind == "stage_c" and result.preset == "tiny"
    unet = diffusers.StableCascadeUNet.from_pretrained(out).eval()
    assert not any(".attn.in_proj" in k for k in unet.state_dict())
    i = _stage_c_inputs()
    with torch.no_grad():
        ours = stage_c(i["x"], i["r"], i["clip_text"], i["clip_pooled"], i["clip_img"])
        theirs = unet(i["x"], i["r"], clip_text_pooled=i["clip_pooled"], clip_text=i["clip_text"],
                      clip_img=i["clip_img"], return_dict=False)[0]
    assert ours.abs().mean() > 1e-2
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    record = json.loads((out / "export.json").read_text())
    assert record["to"] == "diffusers" and record["kind"] == "stage_c" and len(record["source_sha256"]) == 64
    # and it loads back through our own loader as the same weights
    back = load_weights(out, kind="stage_c")
    assert all(torch.equal(back[k], v) for k, v in stage_c.state_dict().items())


def test_stage_b_to_diffusers_loads_and_matches(tmp_path, stage_b):
    src = _file(tmp_path, "stage_b_lite.safetensors", stage_b)
    out = tmp_path / "decoder"
    export_weights(src, out, "diffusers")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["_class_name"] == "StableCascadeUNet" and cfg["effnet_in_channels"] == 16 and cfg["switch_level"] is None
    unet = diffusers.StableCascadeUNet.from_pretrained(out).eval()
    g = torch.Generator().manual_seed(4)
    x, r = torch.randn(2, 4, 32, 32, generator=g), torch.rand(2, generator=g)
    effnet, clip = torch.randn(2, 16, 6, 6, generator=g), torch.randn(2, 1, 32, generator=g)
    with torch.no_grad():
        ours = stage_b(x, r, effnet, clip)
        theirs = unet(x, r, clip_text_pooled=clip, effnet=effnet, return_dict=False)[0]
    assert ours.abs().mean() > 1e-2
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("manifest, component, preset", [
    ("diffusers_prior", "stage_c", "big"), ("diffusers_prior_lite", "stage_c", "lite"),
    ("diffusers_decoder", "stage_b", "big"), ("diffusers_decoder_lite", "stage_b", "lite")])
def test_diffusers_config_equals_the_released_configs(manifest, component, preset):
    """The config.json of an exported released-size network is the one stabilityai/stable-cascade ships."""
    from conftest import load_manifest

    from cascadekit.generator.diffusers_unet_config import diffusers_unet_config

    cfg_cls = StageCConfig if component == "stage_c" else StageBConfig
    ours = diffusers_unet_config(cfg_cls.preset(preset).kwargs(), component)
    assert ours.pop("_class_name") == "StableCascadeUNet" and ours.pop("_diffusers_version")
    assert ours == load_manifest(manifest)["config"]


def test_official_single_file_fp32_and_bf16(tmp_path, stage_c):
    src = _file(tmp_path, "prior.safetensors", stage_c)
    a = export_weights(src, tmp_path / "a", "official")
    assert [p.name for p in a.files] == ["stage_c_lite.safetensors", "export.json"]
    state = load_file(str(a.files[0]))
    assert set(state) == set(stage_c.state_dict())  # official key names
    assert all(torch.equal(state[k], v) for k, v in stage_c.state_dict().items())
    b = export_weights(src, tmp_path / "b", "official", dtype="bf16")
    assert b.files[0].name == "stage_c_lite_bf16.safetensors"
    with safe_open(str(b.files[0]), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        t = f.get_tensor("clip_txt_mapper.weight")
    assert t.dtype == torch.bfloat16
    assert torch.equal(t, stage_c.state_dict()["clip_txt_mapper.weight"].to(torch.bfloat16))
    # a diffusers folder exported back to official gives the original tensors
    export_weights(src, tmp_path / "d", "diffusers")
    c = export_weights(tmp_path / "d", tmp_path / "c", "official")
    back = load_file(str(c.files[0]))
    assert all(torch.equal(back[k], v) for k, v in stage_c.state_dict().items())


def test_training_run_latest_and_ema(tmp_path, stage_c, stage_b):
    run = tmp_path / "run"
    sd = {k: v.clone() for k, v in stage_c.state_dict().items()}
    ema = {k: v + 1 for k, v in sd.items()}
    save_checkpoint(run, 10, weights=sd, ema=ema, state={"step": torch.tensor(10)})
    out = export_weights(run, tmp_path / "o", "official").files[0]
    assert torch.equal(load_file(str(out))["clip_txt_mapper.weight"], sd["clip_txt_mapper.weight"])
    out = export_weights(run / "checkpoints" / "step_000010", tmp_path / "e", "official", ema=True).files[0]
    assert torch.equal(load_file(str(out))["clip_txt_mapper.weight"], ema["clip_txt_mapper.weight"])
    b_run = tmp_path / "b_run"  # a Stage B fine-tuning run: official release names in its checkpoints
    save_checkpoint(b_run, 4, weights=dict(stage_b.state_dict()), weights_name="stage_b_lite.safetensors", state={})
    r = export_weights(b_run, tmp_path / "b", "official", dtype="bf16")
    assert r.kind == "stage_b" and r.files[0].name == "stage_b_lite_bf16.safetensors"
    lora = tmp_path / "lora_run"
    save_checkpoint(lora, 1, weights={"a": torch.zeros(1)}, weights_name="lora.safetensors", state={})
    with pytest.raises(InputError, match="LoRA checkpoint"):
        export_weights(lora, tmp_path / "l", "official")
    with pytest.raises(InputError, match="no intact checkpoint yet"):
        (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
        export_weights(tmp_path / "empty", tmp_path / "x", "official")
    assert not (tmp_path / "x").exists() and not (tmp_path / "l").exists()


def test_controlnet_official_only(tmp_path):
    src = write_controlnet(tmp_path / "my_canny.safetensors", "canny")
    r = export_weights(src, tmp_path / "o", "official", dtype="bf16")
    assert r.files[0].name == "canny.safetensors" and r.kind == "controlnet"
    net, info = load_controlnet(r.files[0])  # proj_blocks kept in the metadata
    ref, ref_info = load_controlnet(src)
    assert info.config == ref_info.config and info.control == "canny"
    assert all(torch.equal(v, ref.state_dict()[k].to(torch.bfloat16)) for k, v in net.state_dict().items())
    with pytest.raises(InputError, match="diffusers has no Stable Cascade ControlNet"):
        export_weights(src, tmp_path / "d", "diffusers")
    assert not (tmp_path / "d").exists()
    # a ControlNet training run (generator/tasks/controlnet.py writes controlnet.safetensors + proj_blocks metadata)
    run = tmp_path / "cn_run"
    save_checkpoint(run, 2, weights=dict(ref.state_dict()), weights_name="controlnet.safetensors", state={},
                    weights_metadata={"format": "pt", "proj_blocks": json.dumps(ref_info.config.proj_blocks)})
    r = export_weights(run, tmp_path / "from_run", "official")
    net, info = load_controlnet(r.files[0])
    assert r.files[0].name == "canny.safetensors" and info.config == ref_info.config
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in net.state_dict().items())


def test_refuses_other_models_and_bad_settings(tmp_path, tmp_path_factory):
    tiny_weights = tiny_weights_dir(tmp_path_factory)
    with pytest.raises(WeightsError, match="export supports Stage C, Stage B and ControlNet"):
        export_weights(tiny_weights / "stage_a.safetensors", tmp_path / "a", "official")
    with pytest.raises(InputError, match="export target"):
        export_weights(tiny_weights / "stage_c_lite.safetensors", tmp_path / "a", "onnx")
    with pytest.raises(InputError, match="export dtype"):
        export_weights(tiny_weights / "stage_c_lite.safetensors", tmp_path / "a", "official", dtype="fp16")
    assert not (tmp_path / "a").exists()


def test_overwrite_convention(tmp_path, stage_c):
    src = _file(tmp_path, "c.safetensors", stage_c)
    out = tmp_path / "o"
    export_weights(src, out, "diffusers")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"):
        export_weights(src, out, "official")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                     "export.json", "notes.txt"]
    export_weights(src, out, "official", overwrite=True)  # the earlier diffusers files go, notes.txt stays
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "notes.txt", "stage_c_lite.safetensors"]


def test_cli_export(tmp_path, stage_c):
    src = _file(tmp_path, "c.safetensors", stage_c)
    runner = CliRunner()
    r = runner.invoke(main, ["export", src, "--to", "diffusers", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert "exported stage_c (tiny)" in r.output and (tmp_path / "d" / "config.json").is_file()
    r = runner.invoke(main, ["export", src, "--to", "diffusers", "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "error:" in r.output and "--overwrite" in r.output
    r = runner.invoke(main, ["export", src, "--to", "diffusers", "--out", str(tmp_path / "d"), "--overwrite"])
    assert r.exit_code == 0, r.output
    cn = write_controlnet(tmp_path / "sr.safetensors", "sr")
    r = runner.invoke(main, ["export", str(cn), "--to", "diffusers", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "error:" in r.output and "no Stable Cascade ControlNet" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "c").exists()
