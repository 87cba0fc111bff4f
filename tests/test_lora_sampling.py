"""Sampling with LoRA files: new tokens in the prompt, --lora-scale, several files, official files with --lora-token."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from _tiny_weights import tiny_weights_dir
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from cascadekit.codec.errors import InputError
from cascadekit.codec.text import TextEncoder
from cascadekit.codec.weights.assign import load_into
from cascadekit.generator.lora import save_lora
from cascadekit.generator.lora_layers import apply_lora, lora_layers
from cascadekit.generator.pipeline import TextToImagePipeline, read_png_parameters
from cascadekit.generator.retoken import setup_train_tokens
from cascadekit.generator.stage_c import StageC

SMALL = dict(height=64, width=64, prior_steps=2, decoder_steps=1, seed=3)
PROMPT = "a dog [fernando] in the snow"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


def _lora_file(weights, path, seed, layout="auto"):
    """A rank-2 LoRA with a new token [fernando] (init: the rows of ^dog) on the tiny weights, random factors."""
    sc = json.loads((weights / "cascadekit.json").read_text())["models"]["stage_c"]
    stage_c = load_into(StageC(**sc), load_file(str(weights / "stage_c_lite.safetensors")))
    text = TextEncoder.from_pretrained(weights)
    apply_lora(stage_c, rank=2, targets=[".attn"])
    rt = setup_train_tokens(text.tokenizer, text.model, [["[fernando]", "^dog"]])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, d in lora_layers(stage_c):
            d.lora_up.copy_(torch.randn(d.lora_up.shape, generator=g) * 0.5)
        rt.embeddings.copy_(torch.randn(rt.embeddings.shape, generator=g) * 2)
    return save_lora(stage_c, path, text_model=text.model, layout=layout)


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    return _lora_file(weights, d / "a.safetensors", 1), _lora_file(weights, d / "b.safetensors", 2, "cascadekit")


def _pipe(weights, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TextToImagePipeline.from_pretrained(weights, **kw)


def test_pipeline_adds_tokens_and_scales(weights, files):
    a, b = files
    plain = _pipe(weights)
    full = _pipe(weights, lora=a)
    half = _pipe(weights, lora=a, lora_scale=0.5)
    zero = _pipe(weights, lora=a, lora_scale=0.0)
    assert full.text_encoder.tokenizer.convert_tokens_to_ids("[fernando]") == 814
    assert "[fernando]" not in plain.text_encoder.tokenizer.get_vocab()
    enc = {name: p.text_encoder.encode([PROMPT, "a fox"])[0] for name, p in (("full", full), ("zero", zero))}
    assert not torch.equal(enc["full"][0], enc["zero"][0])  # the token's trained row is used ...
    assert torch.equal(enc["full"][1], plain.text_encoder.encode(["a fox"])[0][0])  # ... other rows are untouched
    outs = {name: p([PROMPT], **SMALL) for name, p in (("plain", plain), ("full", full), ("half", half))}
    assert not torch.equal(outs["full"].latents, outs["half"].latents)
    assert not torch.equal(outs["full"].latents, outs["plain"].latents)
    assert outs["half"].parameters[0]["lora"] == str(a) and outs["half"].parameters[0]["lora_scale"] == 0.5
    # scale 0: the base model exactly (for a prompt without the new token)
    assert torch.equal(zero(["a fox"], **SMALL).images, plain(["a fox"], **SMALL).images)


def test_several_files_add_up(weights, files):
    a, b = files
    base = _pipe(weights).stage_c.state_dict()
    one_a, one_b, both = _pipe(weights, lora=a), _pipe(weights, lora=b), _pipe(weights, lora=[a, b])
    assert both.lora == [str(a), str(b)]
    for k, w in both.stage_c.state_dict().items():
        want = base[k] + (one_a.stage_c.state_dict()[k] - base[k]) + (one_b.stage_c.state_dict()[k] - base[k])
        torch.testing.assert_close(w, want, rtol=1e-5, atol=1e-6)
    emb = both.text_encoder.model.get_input_embeddings().weight
    assert emb.shape[0] == 815  # the same new token in both files: one row, both deltas on it
    row = {name: p.text_encoder.model.get_input_embeddings().weight[814]
           for name, p in (("a", one_a), ("b", one_b), ("init", _pipe(weights, lora=a, lora_scale=0.0)))}
    torch.testing.assert_close(emb[814], row["a"] + row["b"] - row["init"], rtol=1e-5, atol=1e-6)


def test_official_file_needs_its_tokens(weights, files, tmp_path):
    official = tmp_path / "official.safetensors"
    save_file(load_file(str(files[0])), str(official))  # no cascadekit metadata: as the official trainer writes
    with pytest.raises(InputError, match="token list"):
        _pipe(weights, lora=official)
    p = _pipe(weights, lora=official, lora_tokens=[["[fernando]", "^dog"]])
    q = _pipe(weights, lora=files[0])
    assert torch.equal(p([PROMPT], **SMALL).latents, q([PROMPT], **SMALL).latents)


def test_sample_command_with_loras(weights, files, tmp_path):
    from cascadekit.cli.main import main

    a, b = files
    args = ["sample", PROMPT, "--weights", str(weights), "--steps", "2", "--decoder-steps", "1", "--height", "64",
            "--width", "64", "--seed", "3"]
    r = CliRunner().invoke(main, args + ["--out", str(tmp_path / "ab"), "--lora", str(a), "--lora", str(b),
                                         "--lora-scale", "0.8"])
    assert r.exit_code == 0, r.output
    meta = read_png_parameters(next((tmp_path / "ab").glob("image_*.png")))
    assert meta["lora"] == [str(a), str(b)] and meta["lora_scale"] == 0.8 and meta["prompt"] == PROMPT
    r = CliRunner().invoke(main, args + ["--out", str(tmp_path / "x"), "--lora-scale", "0.5"])
    assert r.exit_code == 2 and "--lora-scale needs --lora" in r.output
    official = tmp_path / "official.safetensors"
    save_file(load_file(str(a)), str(official))
    r = CliRunner().invoke(main, args + ["--out", str(tmp_path / "o"), "--lora", str(official)])
    assert r.exit_code == 2 and "token list" in r.output, r.output
    r = CliRunner().invoke(main, args + ["--out", str(tmp_path / "o2"), "--lora", str(official),
                                         "--lora-token", "[fernando]=^dog"])
    assert r.exit_code == 0, r.output


def test_a_lora_on_the_empty_caption_tokens_renews_the_unconditional(weights, tmp_path):
    """A LoRA that fine-tunes the end-of-text row changes the empty caption's embedding (the unconditional)."""
    sc = json.loads((weights / "cascadekit.json").read_text())["models"]["stage_c"]
    stage_c = load_into(StageC(**sc), load_file(str(weights / "stage_c_lite.safetensors")))
    text = TextEncoder.from_pretrained(weights)
    apply_lora(stage_c, rank=2, targets=[".attn"])
    rt = setup_train_tokens(text.tokenizer, text.model, [["endoftext", None]])
    with torch.no_grad():
        rt.embeddings.normal_(0, 1, generator=torch.Generator().manual_seed(4))
    path = save_lora(stage_c, tmp_path / "eot.safetensors", text_model=text.model)
    plain, pipe = _pipe(weights), _pipe(weights, lora=path)
    assert not torch.equal(pipe.empty[0], plain.empty[0])
    t, p = pipe.text_encoder.encode([""])
    assert torch.equal(pipe.empty[0], t[:1].float()) and torch.equal(pipe.empty[1], p[:1].float().reshape(1, 1, -1))
