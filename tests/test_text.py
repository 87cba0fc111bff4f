"""CLIP text/image embeddings through the real code path, with the tiny local CLIP."""
from __future__ import annotations

import shutil

import pytest
import torch
import torchvision.transforms as T

from _tiny_weights import tiny_weights_dir
from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.text import (
    EMPTY_CAPTION_FILE,
    ImageEncoder,
    TextEncoder,
    empty_caption_cache_paths,
    empty_caption_embeddings,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def text_encoder(tiny):
    return TextEncoder.from_pretrained(tiny)


def test_text_shapes_and_hidden_states_before_final_norm(text_encoder):
    prompts = ["a photo of a cat on the table", "a red car at night", ""]
    clip_text, pooled = text_encoder.encode(prompts)
    assert clip_text.shape == (3, 77, 32) and pooled.shape == (3, 1, 32)
    assert torch.isfinite(clip_text).all() and torch.isfinite(pooled).all()
    tok = text_encoder.tokenize(prompts)
    with torch.no_grad():
        out = text_encoder.model(**tok, output_hidden_states=True)
    # clip_text is the last layer's output BEFORE the final layer norm, not last_hidden_state
    assert torch.equal(clip_text, out.hidden_states[-1])
    assert not torch.allclose(clip_text, out.last_hidden_state, atol=1e-3)
    final_norm = text_encoder.model.text_model.final_layer_norm
    torch.testing.assert_close(final_norm(clip_text), out.last_hidden_state)
    torch.testing.assert_close(pooled[:, 0], out.text_embeds)
    # different prompts -> different embeddings; padding with the attention mask as the official code
    assert not torch.allclose(pooled[0], pooled[1])
    assert tok["attention_mask"].shape == (3, 77) and tok["attention_mask"][2].sum() == 2  # <sot> <eot>


def test_tokenizer_round_trip_and_truncation(text_encoder):
    tk = text_encoder.tokenizer
    text = "a photo of a cat sitting on a wooden table"
    ids = text_encoder.tokenize([text])["input_ids"][0]
    assert ids[0] == tk.bos_token_id
    n = int((ids != tk.pad_token_id).sum())  # pad == eot; the first eot ends the prompt
    assert tk.decode(ids[1:n], skip_special_tokens=True).strip() == text
    # real BPE merges: common words are single tokens, not characters
    assert len(tk.tokenize("the photo")) == 2
    long = " ".join(["mountain lake"] * 100)
    ids = text_encoder.tokenize([long])["input_ids"][0]
    assert ids.shape == (77,) and ids[0] == tk.bos_token_id and ids[-1] == tk.eos_token_id
    with pytest.raises(InputError):
        text_encoder.tokenize("not a list")


def test_text_encoder_from_subfolder_and_missing(tiny, tmp_path):
    enc = TextEncoder.from_pretrained(tiny / "text_encoder")  # tokenizer found beside it
    assert enc.max_length == 77 and enc.hidden_size == 32 and enc.projection_dim == 32
    with pytest.raises(WeightsError, match="no CLIP text encoder"):
        TextEncoder.from_pretrained(tmp_path)


def test_image_encoder(tiny):
    enc = ImageEncoder.from_pretrained(tiny)
    assert (enc.size, enc.crop) == (32, 32)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 40, 56, generator=g)
    emb = enc.encode(images)
    assert emb.shape == (2, 1, 24) and torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1])
    # the official clip_preprocess: bicubic antialiased resize of the short side, centre crop, CLIP mean/std
    official = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC, antialias=True), T.CenterCrop(32),
                          T.Normalize(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))])
    torch.testing.assert_close(enc.preprocess(images), official(images))
    with torch.no_grad():
        ref = enc.model(pixel_values=official(images)).image_embeds
    torch.testing.assert_close(emb[:, 0], ref)
    with pytest.raises(InputError):
        enc.encode(torch.rand(2, 1, 32, 32))


def test_empty_caption_cache_written_then_reused(tiny, text_encoder, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()  # a folder without any text encoder
    cache_root = tmp_path / "usercache"
    with pytest.raises(WeightsError) as e:
        empty_caption_embeddings(weights, cache_root=cache_root)
    assert "allow_zeros=True" in str(e.value) and "text_encoder" in str(e.value)
    z_text, z_pooled = empty_caption_embeddings(weights, allow_zeros=True, cache_root=cache_root)
    assert z_text.shape == (1, 77, 1280) and z_pooled.shape == (1, 1, 1280) and not z_text.any()

    text, pooled = empty_caption_embeddings(weights, text_encoder=text_encoder, cache_root=cache_root)
    ref_text, ref_pooled = text_encoder.encode([""])
    assert torch.equal(text, ref_text) and torch.equal(pooled, ref_pooled)
    assert (weights / EMPTY_CAPTION_FILE).is_file()
    # reused without any text encoder
    again_text, again_pooled = empty_caption_embeddings(weights, cache_root=cache_root, dtype=torch.bfloat16)
    assert again_text.dtype == torch.bfloat16
    assert torch.equal(again_text, ref_text.to(torch.bfloat16)) and torch.equal(again_pooled, ref_pooled.to(torch.bfloat16))


def test_empty_caption_unwritable_folder_uses_user_cache(text_encoder, tmp_path):
    weights = tmp_path / "ro"
    weights.mkdir()
    (weights / EMPTY_CAPTION_FILE).mkdir()  # the cache path cannot be written as a file
    cache_root = tmp_path / "usercache"
    text, _ = empty_caption_embeddings(weights, text_encoder=text_encoder, cache_root=cache_root)
    user_cache = empty_caption_cache_paths(weights, cache_root)[1]
    assert user_cache.is_file() and user_cache.parent.parent == cache_root
    text2, _ = empty_caption_embeddings(weights, cache_root=cache_root)  # no encoder: served from the user cache
    assert torch.equal(text, text2)


def test_empty_caption_loads_text_encoder_from_weights_folder(tiny, tmp_path):
    weights = tmp_path / "w"
    shutil.copytree(tiny / "text_encoder", weights / "text_encoder")
    shutil.copytree(tiny / "tokenizer", weights / "tokenizer")
    text, pooled = empty_caption_embeddings(weights, cache_root=tmp_path / "c")
    assert text.shape == (1, 77, 32) and pooled.shape == (1, 1, 32)
    assert (weights / EMPTY_CAPTION_FILE).is_file()


def test_hub_cache_snapshot_is_never_written(tmp_path):
    snap = tmp_path / "models--org--x" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    paths = empty_caption_cache_paths(snap, tmp_path / "c")
    assert len(paths) == 1 and paths[0].is_relative_to(tmp_path / "c")


@pytest.mark.filterwarnings("ignore:.*TINY RANDOM")
def test_text_encoder_from_hub_id_resolves_once(tiny, monkeypatch):
    """A hub id is resolved (downloaded) once for both the text encoder and its tokenizer."""
    from cascadekit.codec.weights import sources

    calls = []

    def fake_download(repo_id, patterns):
        calls.append((repo_id, sorted(patterns)))
        return tiny, "local stand-in"

    monkeypatch.setattr(sources, "_hub_download", fake_download)
    enc = TextEncoder.from_pretrained("someone/stable-cascade")
    assert enc.source == str(tiny / "text_encoder") and enc.hidden_size == 32
    assert len(calls) == 1 and calls[0][0] == "someone/stable-cascade"
