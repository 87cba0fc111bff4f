"""LoRA on Stage C: starts as the base model, save/load of the factors alone, merge equivalence, training."""
from __future__ import annotations

import pytest
import torch
from generator_helpers import FixedEmpty, tiny_store
from generator_helpers import stage_c_inputs as _inputs
from generator_helpers import tiny_stage_c as _model
from safetensors.torch import save_file

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.weights.assign import load_into
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.lora import (apply_lora, base_state_dict, load_lora, lora_parameters, merge_lora,
                                       merged_state_dict, save_lora)
from cascadekit.generator.stage_c import StageC, StageCConfig
from cascadekit.generator.train import train


def _perturb(model):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_lora_targets_attention_and_starts_at_base():
    base = _model()
    model = _model()
    names = apply_lora(model, rank=2, alpha=2.0, targets=[".attn"])
    assert names and all(n.endswith(("attn.in_proj_weight", "attn.out_proj.weight")) for n in names)
    assert any(n.endswith("in_proj_weight") for n in names)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(*x), base(*x), rtol=0, atol=0)
    assert base_state_dict(model).keys() == base.state_dict().keys()
    with pytest.raises(InputError, match="no linear/attention weight"):
        apply_lora(_model(), rank=2, targets=["does_not_exist"])


def test_lora_save_load_merge_equivalence(tmp_path):
    model = _model()
    apply_lora(model, rank=3, alpha=1.5, targets=[".attn", "kv_mapper"])
    _perturb(model)
    x = _inputs()
    with torch.no_grad():
        out_lora = model(*x)
        assert not torch.allclose(out_lora, _model()(*x), atol=1e-4)  # the LoRA changes the output
    path = save_lora(model, tmp_path / "l.safetensors", targets=[".attn", "kv_mapper"])

    loaded = load_lora(_model(), path)  # fresh base + factors from file
    merged = load_lora(_model(), path, merge=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*x), out_lora, rtol=0, atol=0)
        torch.testing.assert_close(merged(*x), out_lora, rtol=1e-5, atol=1e-5)
    # merged model: plain official keys, loadable into a fresh StageC
    sd = merged.state_dict()
    assert sd.keys() == _model().state_dict().keys()
    fresh = load_into(_model(), sd)
    with torch.no_grad():
        torch.testing.assert_close(fresh(*x), out_lora, rtol=1e-5, atol=1e-5)
    ms = merged_state_dict(loaded)
    for k in sd:
        torch.testing.assert_close(ms[k], sd[k], rtol=0, atol=0)
    merge_lora(loaded)
    assert not [n for n, _ in loaded.named_parameters() if "lora_" in n]

    other = StageC.from_config(StageCConfig.preset("tiny").__class__(**{**StageCConfig.preset("tiny").kwargs(),
                                                                        "c_hidden": [32, 32], "nhead": [2, 2]}))
    with pytest.raises(WeightsError):
        load_lora(other, path)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "not_lora.safetensors"))
    with pytest.raises(WeightsError, match="not a cascadekit LoRA"):
        load_lora(_model(), tmp_path / "not_lora.safetensors")


def test_lora_training_changes_only_factors(tmp_path):
    store = tiny_store(tmp_path / "s.zarr", n=8)
    base = _model()
    save_file(base.state_dict(), str(tmp_path / "base.safetensors"))
    cfg = TrainConfig.from_dict(dict(model="tiny", batch_size=4, steps=4, lr=1e-2, save_every=2, lora_rank=2,
                                     lora_targets=[".attn"], log_every=1))
    with pytest.raises(InputError, match="--init"):
        train(store, cfg, tmp_path / "nobase", text_encoder=FixedEmpty(), log=lambda m: None)
    res = train(store, cfg, tmp_path / "run", init=tmp_path / "base.safetensors", text_encoder=FixedEmpty(),
                log=lambda m: None)
    lora_file = res.last_checkpoint / "lora.safetensors"
    assert lora_file.is_file() and not (res.last_checkpoint / "model.safetensors").exists()
    model = load_lora(_model(), lora_file)
    moved = [p for n, p in lora_parameters(model) if n.endswith("lora_up")]
    assert any(p.abs().max() > 0 for p in moved)  # up starts at zero: training moved it
    # resume continues from the LoRA factors (base weights recorded in run.json)
    res2 = train(store, TrainConfig.from_dict({**cfg.to_dict(), "steps": 6}), tmp_path / "run", resume=True,
                 text_encoder=FixedEmpty(), log=lambda m: None)
    assert res2.step == 6
