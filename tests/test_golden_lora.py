"""The official LoRA + ReToken file layout reproduces the official outputs (golden case `lora_retoken`)
and the official 3.6B key list (manifest `lora_stage_c_big`)."""
from __future__ import annotations

import pytest
import torch
from conftest import GOLDEN, load_golden, load_manifest
from safetensors.torch import save_file

from cascadekit.codec.errors import WeightsError
from cascadekit.codec.text import clip_classes
from cascadekit.codec.weights.assign import build
from cascadekit.generator import StageC
from cascadekit.generator.lora import load_lora, official_order, read_lora_file, save_lora
from cascadekit.generator.lora_layers import LoRADelta, apply_lora, lora_layers
from cascadekit.generator.retoken import ReToken, apply_retoken, mean_row
from cascadekit.generator.stage_c import StageCConfig

CASE = "extensions/lora_retoken"


def _text_model(meta, state):
    config_cls, model_cls = clip_classes("CLIPTextConfig", "CLIPTextModelWithProjection")
    model = model_cls(config_cls(**meta["text_config"]))
    sd = {k[len("text_model."):]: v for k, v in state.items() if k.startswith("text_model.")}
    model.load_state_dict(sd, strict=False)
    return model.eval()


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    meta, state, inputs, outputs = load_golden(CASE)
    lora_file = tmp_path_factory.mktemp("golden_lora") / "lora.safetensors"  # the official file, as released
    save_file({k[len("lora."):]: v.contiguous() for k, v in state.items() if k.startswith("lora.")}, str(lora_file))
    return meta, state, inputs, outputs, lora_file


def _stage_c(meta, state):
    sd = {k[len("stage_c."):]: v for k, v in state.items() if k.startswith("stage_c.")}
    return build(lambda: StageC(**meta["constructor_kwargs"]), sd)


def test_golden_lora_retoken(golden):
    meta, state, inputs, outputs, lora_file = golden
    text_model = _text_model(meta, state)
    stage_c = _stage_c(meta, state)
    load_lora(stage_c, lora_file, text_model=text_model)
    assert len(lora_layers(stage_c)) == meta["lora"]["n_layers"]
    tol = meta["per_output_tolerance"]
    with torch.no_grad():
        t = text_model(input_ids=inputs["input_ids"].long())
        x = [inputs[k] for k in ("x", "r", "clip_text", "clip_text_pooled", "clip_img")]
        out = stage_c(*x, sca=inputs["sca"])
    for name, got in (("text_last_hidden_state", t.last_hidden_state), ("text_embeds", t.text_embeds), ("out", out)):
        torch.testing.assert_close(got, outputs[name], **tol[name], msg=lambda m: f"{name}: {m}")
    # without the LoRA the outputs differ clearly (the case does test the deltas)
    with torch.no_grad():
        plain = _stage_c(meta, state)(*x, sca=inputs["sca"])
        plain_text = _text_model(meta, state)(input_ids=inputs["input_ids"].long()).text_embeds
    assert (plain - outputs["out"]).abs().max() > 100 * tol["out"]["atol"]
    assert (plain_text - outputs["text_embeds"]).abs().max() > 100 * tol["text_embeds"]["atol"]


def test_golden_lora_merged_equals_parametrized(golden):
    meta, state, inputs, outputs, lora_file = golden
    stage_c, text_model = _stage_c(meta, state), _text_model(meta, state)
    load_lora(stage_c, lora_file, text_model=text_model, merge=True)
    assert not any(isinstance(m, (LoRADelta, ReToken)) for m in [*stage_c.modules(), *text_model.modules()])
    with torch.no_grad():
        t = text_model(input_ids=inputs["input_ids"].long())
        out = stage_c(*[inputs[k] for k in ("x", "r", "clip_text", "clip_text_pooled", "clip_img")], sca=inputs["sca"])
    tol = meta["per_output_tolerance"]
    torch.testing.assert_close(t.text_embeds, outputs["text_embeds"], **tol["text_embeds"])
    torch.testing.assert_close(out, outputs["out"], **tol["out"])


def test_golden_new_row_is_the_mean_of_the_init_rows(golden):
    meta, state, *_ = golden
    weight = state["text_model.text_model.embeddings.token_embedding.weight"]
    new_id = meta["lora"]["new_token_id"]
    torch.testing.assert_close(mean_row(weight[:new_id], [3, 7, 11]), weight[new_id], rtol=1e-6, atol=1e-7)
    assert read_lora_file(golden[4]).token_indices.tolist() == meta["lora"]["retoken_indices"]


def test_official_order_is_the_registration_order(golden):
    """official_order (computed) == the LoRA modules met in stage_c.modules() after registering (the official way)."""
    meta, state, *_ = golden
    stage_c = _stage_c(meta, state)
    planned = official_order(stage_c, [".attn"])
    apply_lora(stage_c, rank=3, targets=[".attn"])
    by_id = {id(d): k for k, d in lora_layers(stage_c)}
    met = [by_id[id(m)] for m in stage_c.modules() if isinstance(m, LoRADelta)]
    assert met == planned == [k for k, _ in lora_layers(stage_c)]
    assert planned[0].endswith("attn.out_proj.weight") and planned[1].endswith("attn.in_proj_weight")


def test_official_3_6b_key_list_with_one_token(tmp_path):
    """An official-layout file written for the 3.6B Stage C (rank 4, '.attn', one new token) has exactly the
    manifest's keys and shapes (models on the meta device: nothing allocated but the LoRA factors)."""
    manifest = load_manifest("lora_stage_c_big")
    with torch.device("meta"):
        stage_c = StageC.from_config(StageCConfig.preset("big"))
    parametrized = [k.rsplit(".", 1)[0] for k in official_order(stage_c, [".attn"])]
    assert sorted(parametrized) == sorted(manifest["parametrized_modules"])
    apply_lora(stage_c, rank=4, targets=[".attn"], init="official")
    for _, d in lora_layers(stage_c):  # real factors (meta tensors cannot be saved)
        d.lora_down = torch.nn.Parameter(torch.zeros(d.lora_down.shape))
        d.lora_up = torch.nn.Parameter(torch.randn(d.lora_up.shape))
    emb = torch.nn.Embedding(49409, 1280, device="meta")

    class Text(torch.nn.Module):  # the part of CLIPTextModelWithProjection that ReToken touches
        def __init__(self):
            super().__init__()
            self.emb = emb

        def get_input_embeddings(self):
            return self.emb

    text = Text()
    rt = apply_retoken(text, [49408])
    rt.embeddings = torch.nn.Parameter(torch.zeros(1, 1280))
    rt.indices = torch.tensor([49408])
    path = save_lora(stage_c, tmp_path / "lora.safetensors", text_model=text, tokens=[["[fernando]", "^dog</w>"]])
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        got = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    assert got == {k: list(s) for k, s in manifest["state_dict"]}
    assert manifest["n_layers"] == len(lora_layers(stage_c)) == 128
    f = read_lora_file(path)
    assert f.tokens[0].token == "[fernando]" and f.rank == 4 and f.layer_keys == official_order(stage_c, [".attn"])
    with torch.device("meta"):
        lite = StageC.from_config(StageCConfig.preset("lite"))
    with pytest.raises(WeightsError, match="fits the 'big' Stage C; is it a LoRA for another Stage C size"):
        load_lora(lite, path)


def test_golden_fixture_present():
    assert (GOLDEN / f"{CASE}.safetensors").is_file()
