"""Fine-tuning Stage C from official-format and diffusers-format (``prior_lite/`` StableCascadeUNet,
split q/k/v) weights through `cascadekit train --init`; LoRA files hold only the LoRA factors."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from generator_helpers import FixedEmpty, tiny_store
from safetensors.torch import load_file, save_file

from cascadekit.codec.weights.keys import official_to_diffusers
from cascadekit.generator.stage_c import StageC, StageCConfig

# the diffusers StableCascadeUNet config equivalent to StageCConfig.preset("tiny"), written out by hand
TINY_PRIOR_CONFIG = dict(
    _class_name="StableCascadeUNet", in_channels=16, out_channels=16, timestep_ratio_embedding_dim=64,
    patch_size=1, conditioning_dim=64, block_out_channels=[32, 64], num_attention_heads=[2, 4],
    down_num_layers_per_block=[1, 2], up_num_layers_per_block=[2, 1], down_blocks_repeat_mappers=[1, 1],
    up_blocks_repeat_mappers=[2, 1],
    block_types_per_layer=[["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"]] * 2,
    clip_text_in_channels=32, clip_text_pooled_in_channels=32, clip_image_in_channels=24, clip_seq=4,
    kernel_size=3, dropout=[0.1, 0.1], self_attn=True, timestep_conditioning_type=["sca", "crp"],
    switch_level=[False],
)


def _base() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    sd = StageC.from_config(StageCConfig.preset("tiny")).state_dict()
    return {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in sd.items()}  # far from any fresh init


def _train_cli(store, run, init, extra=()):
    from cascadekit.cli.main import main

    return CliRunner().invoke(main, ["train", "--data", str(store), "--config", "tiny", "--out", str(run),
                                     "--init", str(init), "--set", "steps=1", "--set", "save_every=1",
                                     "--set", "lr=1e-6", "--set", "caption_dropout=0", *extra])


def _close_to(got: dict, base: dict) -> float:
    assert got.keys() == base.keys()
    return max((got[k].float() - base[k]).abs().max().item() for k in base)


def test_finetune_from_a_diffusers_prior_folder(tmp_path):
    base = _base()
    dsd = official_to_diffusers(base, "stage_c")
    assert any(".to_q." in k for k in dsd) and not any("in_proj_weight" in k for k in dsd)  # split q/k/v
    snap = tmp_path / "stable-cascade-prior"
    (snap / "prior_lite").mkdir(parents=True)
    (snap / "prior_lite" / "config.json").write_text(json.dumps(TINY_PRIOR_CONFIG))
    save_file({k: v.contiguous() for k, v in dsd.items()}, str(snap / "prior_lite" / "diffusion_pytorch_model.safetensors"))
    store = tiny_store(tmp_path / "s.zarr", n=4)
    r = _train_cli(store, tmp_path / "run", snap)
    assert r.exit_code == 0, r.output
    got = load_file(str(tmp_path / "run" / "checkpoints" / "step_000001" / "model.safetensors"))
    assert _close_to(got, base) < 1e-4  # one tiny step from the diffusers weights, saved in official keys
    assert any(not torch.equal(got[k], base[k]) for k in base)  # and it did train


def test_finetune_from_an_official_bf16_file(tmp_path):
    base = {k: v.bfloat16() for k, v in _base().items()}
    f = tmp_path / "stage_c_lite_bf16.safetensors"
    save_file(base, str(f))
    store = tiny_store(tmp_path / "s.zarr", n=4)
    r = _train_cli(store, tmp_path / "run", f)
    assert r.exit_code == 0, r.output
    got = load_file(str(tmp_path / "run" / "checkpoints" / "step_000001" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in got.values())  # float32 master weights
    assert _close_to(got, {k: v.float() for k, v in base.items()}) < 1e-4
    # a file of another model is refused before training, with the reason
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    r = _train_cli(store, tmp_path / "run2", tmp_path / "other.safetensors")
    assert r.exit_code == 2 and "error" in r.output
    assert not (tmp_path / "run2" / "checkpoints").exists()


def test_lora_checkpoint_holds_only_the_factors(tmp_path):
    from cascadekit.generator.config import TrainConfig
    from cascadekit.generator.train import train

    save_file(_base(), str(tmp_path / "base.safetensors"))
    store = tiny_store(tmp_path / "s.zarr", n=4)
    c = TrainConfig.from_dict(dict(model="tiny", batch_size=4, steps=1, save_every=1, lora_rank=2, caption_dropout=0))
    res = train(store, c, tmp_path / "run", init=tmp_path / "base.safetensors", text_encoder=FixedEmpty(),
                log=lambda m: None)
    files = sorted(p.name for p in res.last_checkpoint.iterdir())
    assert "lora.safetensors" in files and "model.safetensors" not in files
    lora = load_file(str(res.last_checkpoint / "lora.safetensors"))
    n_base = sum(v.numel() for v in _base().values())
    assert lora and all("lora_" in k for k in lora)
    assert sum(v.numel() for v in lora.values()) < 0.2 * n_base
