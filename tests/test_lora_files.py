"""LoRA files: save -> load round trips in both layouts (with new tokens), official files without metadata,
and bad files (another Stage C size, rank mismatch, indices beyond the vocabulary, missing token list...)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from _tiny_weights import tiny_weights_dir
from generator_helpers import stage_c_inputs as _inputs
from generator_helpers import tiny_stage_c as _stage_c
from safetensors.torch import load_file, save_file

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.text import TextEncoder
from cascadekit.generator.lora import load_lora, read_lora, read_lora_file, save_lora
from cascadekit.generator.lora_layers import apply_lora, lora_layers
from cascadekit.generator.retoken import find_retoken, setup_train_tokens

TOKENS = [["[fernando]", "^dog"], ["^fox</w>", None]]  # a new token and an existing row
PROMPT = "a dog [fernando] with a fox"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)



def _trained(weights, rank=2, alpha=1.0, tokens=TOKENS):
    """A tiny Stage C + tiny CLIP with LoRA and ReToken whose factors/deltas are random (as if trained)."""
    stage_c, text = _stage_c(), TextEncoder.from_pretrained(weights)
    apply_lora(stage_c, rank=rank, alpha=alpha, targets=[".attn"], init="official")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = setup_train_tokens(text.tokenizer, text.model, tokens)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, d in lora_layers(stage_c):
            d.lora_down.copy_(torch.randn(d.lora_down.shape, generator=g) * 0.3)
        rt.embeddings.copy_(torch.randn(rt.embeddings.shape, generator=g))
    return stage_c, text


def _outputs(stage_c, text):
    with torch.no_grad():
        return stage_c(*_inputs()), text.encode([PROMPT])


@pytest.mark.parametrize("layout", ["official", "cascadekit"])
@pytest.mark.parametrize("merge", [False, True])
def test_round_trip_with_new_tokens(weights, tmp_path, layout, merge):
    stage_c, text = _trained(weights)
    want_out, (want_t, want_p) = _outputs(stage_c, text)
    path = save_lora(stage_c, tmp_path / "l.safetensors", targets=[".attn"], layout=layout, text_model=text.model)
    f = read_lora_file(path)
    assert f.layout == layout and f.rank == 2 and f.targets == [".attn"]
    assert [t.to_list() for t in f.tokens] == TOKENS and f.base_vocab == 814
    if layout == "official":
        keys = set(load_file(str(path)))
        assert {"embeddings.embeddings", "embeddings.indices", "weights.0.lora_down", "weights.0.lora_up"} <= keys

    fresh_c, fresh_text = _stage_c(), TextEncoder.from_pretrained(weights)  # tokens come from the file
    load_lora(fresh_c, path, text_model=fresh_text.model, tokenizer=fresh_text.tokenizer, merge=merge)
    got_out, (got_t, got_p) = _outputs(fresh_c, fresh_text)
    tol = dict(rtol=1e-5, atol=1e-5) if merge else dict(rtol=0, atol=0)
    torch.testing.assert_close(got_out, want_out, **tol)
    torch.testing.assert_close(got_t, want_t, **tol)
    torch.testing.assert_close(got_p, want_p, **tol)
    assert fresh_text.tokenizer.convert_tokens_to_ids("[fernando]") == 814
    assert (find_retoken(fresh_text.model) is None) == merge


def test_alpha_is_folded_into_the_official_layout(weights, tmp_path):
    stage_c, text = _trained(weights, alpha=3.0)
    want = _outputs(stage_c, text)[0]
    auto = save_lora(stage_c, tmp_path / "auto.safetensors", text_model=text.model)
    assert read_lora_file(auto).layout == "cascadekit"  # alpha != 1: the exact layout by default
    forced = save_lora(stage_c, tmp_path / "o.safetensors", text_model=text.model, layout="official")
    f = read_lora_file(forced)
    assert f.layout == "official" and f.alpha == 1.0
    fresh = _stage_c()
    with pytest.warns(UserWarning, match="also carries 2 text-encoder token rows"):
        load_lora(fresh, forced)  # no text model given: Stage C only
    got = _outputs(fresh, text)[0]
    assert not torch.equal(got, want)  # folding rounds the factors ...
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())  # ... by float32 ulps


def _strip_metadata(path, dst):
    save_file(load_file(str(path)), str(dst))  # an official file as the official trainer writes it
    return dst


def test_official_file_without_metadata_needs_the_token_list(weights, tmp_path):
    stage_c, text = _trained(weights)
    want_out, (want_t, _) = _outputs(stage_c, text)
    ours = save_lora(stage_c, tmp_path / "ours.safetensors", text_model=text.model, layout="official")
    path = _strip_metadata(ours, tmp_path / "official.safetensors")
    assert read_lora_file(path).tokens is None and read_lora_file(path).layer_keys is None
    with pytest.raises(WeightsError, match="pass the Stage C model"):
        read_lora(path)
    assert set(read_lora(path, model=_stage_c())[0]) == set(read_lora(ours)[0])

    fresh_c, fresh_text = _stage_c(), TextEncoder.from_pretrained(weights)
    with pytest.raises(InputError, match=r"beyond the text model's vocabulary \(814 rows\).*token list"):
        load_lora(fresh_c, path, text_model=fresh_text.model, tokenizer=fresh_text.tokenizer)
    fresh_c, fresh_text = _stage_c(), TextEncoder.from_pretrained(weights)
    with pytest.raises(InputError, match="pass the tokenizer"):
        load_lora(fresh_c, path, text_model=fresh_text.model, tokens=TOKENS)
    fresh_c, fresh_text = _stage_c(), TextEncoder.from_pretrained(weights)
    load_lora(fresh_c, path, text_model=fresh_text.model, tokenizer=fresh_text.tokenizer, tokens=TOKENS)
    got_out, (got_t, _) = _outputs(fresh_c, fresh_text)
    torch.testing.assert_close(got_out, want_out, rtol=0, atol=0)
    torch.testing.assert_close(got_t, want_t, rtol=0, atol=0)


def test_new_tokens_of_two_files_are_remapped(weights, tmp_path):
    """Two official files each trained with one new token at the same index (base vocabulary + 0)."""
    paths = []
    for i, tok in enumerate(["[fernando]", "[snail]"]):
        stage_c, text = _trained(weights, tokens=[[tok, "^dog"]])
        paths.append(save_lora(stage_c, tmp_path / f"{i}.safetensors", text_model=text.model))
        assert read_lora_file(paths[-1]).token_indices.tolist() == [814]
    fresh_c, fresh_text = _stage_c(), TextEncoder.from_pretrained(weights)
    rows_before = fresh_text.model.get_input_embeddings().weight.detach().clone()
    for p in paths:
        load_lora(fresh_c, p, text_model=fresh_text.model, tokenizer=fresh_text.tokenizer, merge=True)
    tok = fresh_text.tokenizer
    assert (tok.convert_tokens_to_ids("[fernando]"), tok.convert_tokens_to_ids("[snail]")) == (814, 815)
    w = fresh_text.model.get_input_embeddings().weight.detach()
    assert w.shape[0] == 816 and torch.equal(w[:814], rows_before)
    for row, p in zip((814, 815), paths):
        base = rows_before[[i for k, i in tok.get_vocab().items() if k.startswith("dog") and i < 814]].mean(0)
        torch.testing.assert_close(w[row], base + read_lora_file(p).token_deltas[0], rtol=1e-6, atol=1e-6)


def test_bad_files(weights, tmp_path):
    stage_c, text = _trained(weights)
    good = save_lora(stage_c, tmp_path / "good.safetensors", text_model=text.model)
    tensors = load_file(str(good))
    meta = {"format": "cascadekit-lora"}

    def write(name, ts, metadata=None):
        save_file(ts, str(tmp_path / name), metadata=metadata)
        return tmp_path / name

    other = _stage_c(c_hidden=[32, 32], nhead=[2, 2])  # another Stage C size
    with pytest.raises(WeightsError, match=r"fits the 'tiny' Stage C.*another Stage C size"):
        load_lora(other, _strip_metadata(good, tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="another Stage C size"):
        load_lora(other, good)

    bad_rank = dict(tensors, **{"weights.1.lora_up": torch.zeros(tensors["weights.1.lora_up"].shape[0], 3)})
    with pytest.raises(WeightsError, match="rank mismatch at layer 1"):
        read_lora_file(write("rank.safetensors", bad_rank))
    three = _stage_c()
    apply_lora(three, rank=3)
    with pytest.raises(WeightsError, match="rank mismatch: .* rank 2, the model's LoRA layers have rank 3"):
        load_lora(three, good)
    info = json.dumps({"rank": 8})
    with pytest.raises(WeightsError, match="metadata says rank 8"):
        read_lora_file(write("meta.safetensors", tensors, {"cascadekit": info}))

    del_up = {k: v for k, v in tensors.items() if k != "weights.3.lora_up"}
    with pytest.raises(WeightsError, match=r"weights.3.lora_down / lora_up missing"):
        read_lora_file(write("gap.safetensors", del_up))
    beyond = dict(tensors, **{"embeddings.indices": torch.tensor([5, 816], dtype=torch.long)})
    fresh = TextEncoder.from_pretrained(weights)
    with pytest.raises(InputError, match=r"token index 816 is beyond the vocabulary \(814 entries \+ 1 new"):
        load_lora(_stage_c(), write("beyond.safetensors", beyond), text_model=fresh.model, tokenizer=fresh.tokenizer,
                  tokens=[["[fernando]", "^dog"]])
    frac = dict(tensors, **{"embeddings.indices": torch.tensor([5.5, 814.0])})
    with pytest.raises(WeightsError, match="non-negative integers"):
        read_lora_file(write("frac.safetensors", frac))
    wide = dict(tensors, **{"embeddings.embeddings": torch.zeros(2, 1280)})
    with pytest.raises(WeightsError, match="width 1280 for a text model of width 32"):
        load_lora(_stage_c(), write("wide.safetensors", wide), text_model=TextEncoder.from_pretrained(weights).model)
    with pytest.raises(WeightsError, match="not a cascadekit LoRA"):
        read_lora_file(write("other.safetensors", {"x": torch.zeros(1)}, meta | {"format": "pt"}))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        read_lora_file(tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match="does not exist"):
        read_lora_file(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="layout must be one of"):
        save_lora(stage_c, tmp_path / "x.safetensors", layout="diffusers")
    assert not (tmp_path / "x.safetensors").exists()
