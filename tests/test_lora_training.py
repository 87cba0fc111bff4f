"""New-token LoRA training on the training core: a tiny model learns "[fernando]", only the LoRA factors and
the token row move, captions without trained tokens get the same embedding either way, exact resume."""
from __future__ import annotations

import warnings

import pytest
import torch
from _tiny_weights import tiny_weights_dir
from safetensors.torch import load_file

from cascadekit.codec.diffusion.gdf import GDF
from cascadekit.codec.errors import InputError
from cascadekit.codec.text import TextEncoder
from cascadekit.generator.checkpoint import latest_checkpoint
from cascadekit.generator.data import TensorData
from cascadekit.generator.lora import read_lora_file
from cascadekit.generator.lora_layers import base_state_dict
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.tasks.lora_tokens import TokenLoRATask, _EmbeddedCaptions
from cascadekit.generator.training.loop import TrainingLoop

CAPTIONS = ["a photo of [fernando]", "a cat on a table", "[fernando] in the snow", "a red car at night"] * 2
QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def text(weights):
    return TextEncoder.from_pretrained(weights)


@pytest.fixture(scope="module")
def data(text):
    """Captions with the new token have their own latent pattern; stored embeddings from the base encoder."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 1, 1, generator=g), torch.randn(16, 1, 1, generator=g)
    lat = torch.stack([(a if "[fernando]" in c else b).expand(16, 4, 4) for c in CAPTIONS]).contiguous()
    # the base encoder has no [fernando]: it embeds the captions as the store would have them (embed-text)
    t, p = text.encode(CAPTIONS)
    return TensorData(lat, CAPTIONS, clip_text=t, clip_text_pooled=p)


def _cfg(**kw) -> TrainConfig:
    base = dict(model="tiny", batch_size=4, steps=30, lr=2e-2, warmup_steps=1, log_every=1, save_every=3,
                keep_checkpoints=20, caption_dropout=0.25, lora_rank=2, train_tokens=[["[fernando]", "^dog"]])
    return TrainConfig.from_dict({**base, **kw})


def _loop(weights, text, data, cfg, out, resume=False):
    task = TokenLoRATask(cfg, init=weights / "stage_c_lite.safetensors", text_encoder=text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TrainingLoop(task, data, cfg, out, resume=resume, device="cpu", **QUIET)


def _token_loss(loop, data) -> float:
    """Epsilon MSE on the captions with [fernando], fixed noise and t (independent of training randomness)."""
    idx = [i for i, c in enumerate(CAPTIONS) if "[fernando]" in c]
    n = len(idx)
    off = torch.zeros(n, dtype=torch.bool)
    x0, cond = loop.task.inputs(data.read("all", idx), {"drop": off, "use_img": off}, torch.device("cpu"))
    g = torch.Generator().manual_seed(123)
    loop.model.eval()
    losses = []
    with torch.no_grad():
        for t in (0.3, 0.5, 0.7, 0.9):
            d = GDF().diffuse(x0, torch.full((n,), t), torch.randn(x0.shape, generator=g))
            losses.append(torch.mean((loop.model(d.x_t, d.noise_cond, **cond) - d.target) ** 2).item())
    loop.model.train()
    return sum(losses) / len(losses)


@pytest.mark.parametrize("lora_init", ["default", "official"])
def test_a_tiny_model_learns_a_new_token(weights, text, data, tmp_path, lora_init):
    loop = _loop(weights, text, data, _cfg(lora_init=lora_init), tmp_path / "run")
    base_c = {k: v.clone() for k, v in base_state_dict(loop.model.stage_c).items()}
    emb = loop.model.text_model.get_input_embeddings()
    row_before = emb.weight.detach()[814].clone()
    before = _token_loss(loop, data)
    res = loop.run()
    loop.close()
    after = _token_loss(loop, data)
    assert after < 0.6 * before, (before, after)
    # the new row moved; every other row, and every weight of Stage C, is bit-identical to the base
    w = emb.weight.detach()
    assert w.shape[0] == 815 and not torch.allclose(w[814], row_before)
    assert torch.equal(w[:814], text.model.get_input_embeddings().weight.detach())
    assert all(torch.equal(v, base_c[k]) for k, v in base_state_dict(loop.model.stage_c).items())
    base_text = text.model.state_dict()
    for k, v in loop.model.text_model.state_dict().items():
        if "token_embedding" not in k:
            assert torch.equal(v, base_text[k]), k
    assert "[fernando]" not in text.tokenizer.get_vocab()  # the caller's text encoder is untouched
    f = read_lora_file(res.last_checkpoint / "lora.safetensors")
    assert f.layout == "official" and f.token_indices.tolist() == [814] and f.tokens[0].token == "[fernando]"


def test_captions_without_trained_tokens_get_the_same_embedding_either_way(weights, text, data, tmp_path):
    loop = _loop(weights, text, data, _cfg(steps=3), tmp_path / "run")
    loop.run()
    loop.close()
    plain = [i for i, c in enumerate(CAPTIONS) if "[fernando]" not in c]
    ids, mask = loop.task._tokenize([CAPTIONS[i] for i in plain])
    assert not bool(torch.isin(ids, loop.task.trained_ids).any())
    off = torch.zeros(len(plain), dtype=torch.bool)
    _, cond = loop.task.inputs(data.read("all", plain), {"drop": off, "use_img": off}, torch.device("cpu"))
    assert not bool(cond["encode"].any())  # these come from the stored embeddings ...
    with torch.no_grad():
        t, p = loop.model.embed(ids, mask)  # ... and the partly trained encoder gives the same
    assert torch.equal(t, cond["clip_text"]) and torch.equal(p, cond["clip_text_pooled"])
    with_token = [i for i, c in enumerate(CAPTIONS) if "[fernando]" in c]
    on = torch.zeros(len(with_token), dtype=torch.bool)
    _, cond = loop.task.inputs(data.read("all", with_token), {"drop": on, "use_img": on}, torch.device("cpu"))
    assert bool(cond["encode"].all())


def test_resume_is_bit_exact(weights, text, data, tmp_path):
    cfg = _cfg(steps=6)
    straight = _loop(weights, text, data, cfg, tmp_path / "a")
    straight.run()
    straight.close()
    first = _loop(weights, text, data, cfg, tmp_path / "b")
    first.run(stop_after=3)
    first.close()
    second = _loop(weights, text, data, cfg, tmp_path / "b", resume=True)
    second.run()
    second.close()
    a = load_file(str(latest_checkpoint(tmp_path / "a") / "lora.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "b") / "lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert bool(a["embeddings.embeddings"].abs().max() > 0)
    with pytest.raises(InputError, match="train_tokens"):
        _loop(weights, text, data, _cfg(steps=8, train_tokens=[["[snail]", "^dog"]]), tmp_path / "b", resume=True)


def test_config_and_store_checks(weights, text, tmp_path):
    with pytest.raises(InputError, match="needs train_tokens"):
        TokenLoRATask(_cfg(train_tokens=[]))
    with pytest.raises(InputError, match="lora_rank > 0"):
        _cfg(lora_rank=0)
    with pytest.raises(InputError, match="not a valid regular expression"):
        _cfg(train_tokens=[["[x]", "(("]])
    lat = torch.zeros(4, 16, 4, 4)
    t, p = text.encode(["a"] * 4)
    no_caps = TensorData(lat, clip_text=t, clip_text_pooled=p)
    with pytest.raises(InputError, match="needs the captions"):
        _loop(weights, text, no_caps, _cfg(), tmp_path / "r")


def test_cascadekit_train_with_train_tokens(weights, tmp_path):
    """`cascadekit train` picks the new-token task for a config with train_tokens (store: captions only)."""
    from click.testing import CliRunner
    from generator_helpers import structured_latents, write_store

    from cascadekit.cli.main import main

    store = write_store(tmp_path / "s.zarr", {"": structured_latents(4)}, captions={"": CAPTIONS[:4]})
    (tmp_path / "c.yaml").write_text("preset: tiny\nsteps: 2\nsave_every: 2\nlora_rank: 2\n"
                                     "train_tokens: [['[fernando]', '^dog'], ['^cat</w>', null]]\n")
    r = CliRunner().invoke(main, ["train", "--data", str(store), "--config", str(tmp_path / "c.yaml"), "--out",
                                  str(tmp_path / "run"), "--init", str(weights), "--text-encoder", str(weights)])
    assert r.exit_code == 0, r.output
    f = read_lora_file(latest_checkpoint(tmp_path / "run") / "lora.safetensors")
    assert f.token_indices.numel() == 2 and f.token_indices.max() == 814 and [t.token for t in f.tokens] == \
        ["[fernando]", "^cat</w>"]


def test_previews_use_the_trained_token(weights, text, data, tmp_path):
    from cascadekit.codec.weights.components import load_component
    from cascadekit.codec.weights.sources import resolve_source

    previewer, _ = load_component(resolve_source(weights, need=("previewer",)), "previewer", device="cpu")
    cfg = _cfg(steps=2, save_every=2, preview_every=2, preview_steps=2, preview_count=2)
    task = TokenLoRATask(cfg, init=weights / "stage_c_lite.safetensors", text_encoder=text, previewer=previewer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop = TrainingLoop(task, data, cfg, tmp_path / "run", device="cpu", **QUIET)
    loop.run()
    loop.close()
    assert (tmp_path / "run" / "previews" / "step_000002.png").is_file()
    # the preview captions are embedded by the trained text encoder (with the new token's row), not the store's
    batch = _EmbeddedCaptions(data, loop.task, loop.model).read("all", [0, 1])
    with torch.no_grad():
        t, _ = loop.model.embed(*loop.task._tokenize(CAPTIONS[:2]))
    assert torch.equal(batch["clip_text"], t)
    assert not torch.equal(batch["clip_text"][0], data.read("all", [0])["clip_text"][0])
