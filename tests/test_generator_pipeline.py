"""Text-to-image pipeline and the `sample` / `train` commands on the tiny random weight set."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from _tiny_weights import tiny_weights_dir
from click.testing import CliRunner
from generator_helpers import tiny_store

from cascadekit.codec.errors import PrecisionError
from cascadekit.codec.weights.assign import load_into
from cascadekit.generator.pipeline import TextToImagePipeline, read_png_parameters, stage_c_latent_size

SMALL = dict(height=64, width=96, prior_steps=3, decoder_steps=2)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def pipe(weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TextToImagePipeline.from_pretrained(weights)


def _count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    return calls, handle


def test_latent_size_rule():
    assert stage_c_latent_size(1024, 1024) == (24, 24)
    assert stage_c_latent_size(1024, 1536) == (24, 36)
    assert stage_c_latent_size(64, 96) == (2, 3)


def test_sampling_is_deterministic_and_png_carries_parameters(pipe, tmp_path):
    a = pipe(["a red fox", "a cat"], seed=7, num_images_per_prompt=2, **SMALL)
    b = pipe(["a red fox", "a cat"], seed=7, num_images_per_prompt=2, **SMALL)
    c = pipe(["a red fox", "a cat"], seed=8, num_images_per_prompt=2, **SMALL)
    assert a.images.shape == (4, 3, 64, 96) and a.latents.shape == (4, 16, 2, 3)
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)
    assert a.images.min() >= 0 and a.images.max() <= 1
    paths = a.save(tmp_path)
    assert len(paths) == 4
    meta = read_png_parameters(paths[2])
    assert meta["prompt"] == "a cat" and meta["seed"] == 7 and meta["prior_guidance"] == 4.0
    assert meta["prior_shift"] == 2.0 and meta["prior_steps"] == 3 and meta["decoder_guidance"] == 1.1
    assert meta["weights"].startswith("TINY RANDOM WEIGHTS")
    from PIL import Image

    with Image.open(paths[0]) as im:
        assert im.text["prompt"] == "a red fox" and im.size == (96, 64)


def test_negative_prompt_and_image_variation_change_the_prior(pipe):
    base = pipe("a fox", seed=1, return_latents=True, **SMALL)
    neg = pipe("a fox", negative_prompt="blurry", seed=1, return_latents=True, **SMALL)
    img = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    var = pipe("a fox", image=img, seed=1, return_latents=True, **SMALL)
    assert not torch.allclose(base.latents, neg.latents)
    assert not torch.allclose(base.latents, var.latents)
    assert var.parameters[0]["image_variation"] is True


def test_img2img_uses_fewer_steps(pipe):
    init = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    calls, h = _count_calls(pipe.stage_c)
    try:
        full = pipe("x", seed=2, return_latents=True, **{**SMALL, "prior_steps": 4})
        n_full = len(calls)
        calls.clear()
        part = pipe("x", seed=2, init_image=init, strength=0.5, return_latents=True, **{**SMALL, "prior_steps": 4})
        n_part = len(calls)
    finally:
        h.remove()
    assert n_full == 4 and n_part == 2
    assert part.parameters[0]["prior_steps"] == 2 and full.parameters[0]["prior_steps"] == 4
    other = pipe("x", seed=2, init_image=torch.zeros(1, 3, 64, 96), strength=0.5, return_latents=True,
                 **{**SMALL, "prior_steps": 4})
    assert not torch.allclose(part.latents, other.latents)  # the init image matters


def test_stage_c_never_runs_in_fp16(weights, pipe):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p16 = TextToImagePipeline.from_pretrained(weights, dtype="fp16")
    assert next(p16.stage_c.parameters()).dtype == torch.bfloat16
    assert any("float16" in str(w.message) and "Stage C" in str(w.message) for w in rec)
    p16.stage_c.half()
    with pytest.raises(PrecisionError, match="float16"):
        p16("x", seed=0, return_latents=True, **SMALL)


def test_trained_checkpoint_reloads_and_samples(pipe, tmp_path):
    from generator_helpers import FixedEmpty
    from safetensors.torch import load_file

    from cascadekit.generator.config import TrainConfig
    from cascadekit.generator.train import train

    store = tiny_store(tmp_path / "s.zarr", n=4)
    res = train(store, TrainConfig.from_dict(dict(model="tiny", batch_size=4, steps=2, save_every=2)),
                tmp_path / "run", text_encoder=FixedEmpty(), log=lambda m: None)
    state = load_file(str(res.last_checkpoint / "model.safetensors"))
    before = pipe("a fox", seed=3, return_latents=True, **SMALL).latents
    old = {k: v.clone() for k, v in pipe.stage_c.state_dict().items()}
    try:
        load_into(pipe.stage_c, state)
        after = pipe("a fox", seed=3, return_latents=True, **SMALL)
    finally:
        load_into(pipe.stage_c, old)
    assert torch.isfinite(after.latents).all() and not torch.allclose(after.latents, before)


def test_sample_command(weights, tmp_path):
    from cascadekit.cli.main import main

    r = CliRunner().invoke(main, ["sample", "a fox", "--weights", str(weights), "--out", str(tmp_path / "o"),
                                  "--steps", "2", "--decoder-steps", "2", "--height", "64", "--width", "64",
                                  "--seed", "11", "--n", "2"])
    assert r.exit_code == 0, r.output
    pngs = sorted((tmp_path / "o").glob("image_*.png"))
    assert len(pngs) == 2 and read_png_parameters(pngs[1])["seed"] == 11
    r = CliRunner().invoke(main, ["sample", "x", "--weights", str(weights), "--out", str(tmp_path / "o2"),
                                  "--strength", "0", "--init-image", str(pngs[0]), "--steps", "2"])
    assert r.exit_code == 2 and "strength" in r.output


def test_train_command(tmp_path):
    from cascadekit.cli.main import main

    store = tiny_store(tmp_path / "s.zarr", n=4)
    (tmp_path / "c.yaml").write_text("model: tiny\nbatch_size: 4\nsteps: 2\nsave_every: 2\ncaption_dropout: 0\n")
    r = CliRunner().invoke(main, ["train", "--data", str(store), "--config", str(tmp_path / "c.yaml"),
                                  "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["steps"] == 2
    (tmp_path / "bad.toml").write_text('model = "tiny"\nlr = -1\nbatch_size = 3\ngrad_accum_steps = 2\n')
    r = CliRunner().invoke(main, ["train", "--data", str(store), "--config", str(tmp_path / "bad.toml"),
                                  "--out", str(tmp_path / "run2")])
    assert r.exit_code == 2 and "lr must be" in r.output and "divisible by grad_accum_steps" in r.output
    assert not (tmp_path / "run2").exists()


def test_train_command_text_encoder_on_the_fly_and_previews(weights, tmp_path):
    from generator_helpers import structured_latents, write_store

    from cascadekit.cli.main import main

    store = write_store(tmp_path / "caps.zarr", {"": structured_latents(4)})  # captions, no embeddings
    r = CliRunner().invoke(main, ["train", "--data", str(store), "--config", "tiny", "--out", str(tmp_path / "run"),
                                  "--text-encoder", str(weights), "--previewer", str(weights),
                                  "--set", "steps=2", "--set", "save_every=2", "--set", "preview_every=2",
                                  "--set", "preview_steps=2"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "previews" / "step_000002.png").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "model.safetensors").is_file()


def test_sample_command_with_lora(weights, tmp_path):
    from safetensors.torch import load_file

    from cascadekit.cli.main import main
    from cascadekit.generator.lora import apply_lora, lora_parameters, save_lora
    from cascadekit.generator.stage_c import StageC

    sc = json.loads((weights / "cascadekit.json").read_text())["models"]["stage_c"]
    model = load_into(StageC(**sc), load_file(str(weights / "stage_c_lite.safetensors")))
    apply_lora(model, rank=2, targets=[".attn"])
    with torch.no_grad():
        for _, p in lora_parameters(model):
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    lora = save_lora(model, tmp_path / "l.safetensors")
    args = ["sample", "a fox", "--weights", str(weights), "--steps", "2", "--decoder-steps", "1", "--height", "64",
            "--width", "64", "--seed", "3"]
    r1 = CliRunner().invoke(main, args + ["--out", str(tmp_path / "plain")])
    r2 = CliRunner().invoke(main, args + ["--out", str(tmp_path / "lora"), "--lora", str(lora)])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    p1, p2 = next((tmp_path / "plain").glob("image_*.png")), next((tmp_path / "lora").glob("image_*.png"))
    assert read_png_parameters(p2)["lora"] == str(lora) and read_png_parameters(p1)["lora"] is None
    assert p1.read_bytes() != p2.read_bytes()


def test_finetune_from_a_weights_folder(weights, tmp_path):
    from generator_helpers import FixedEmpty
    from safetensors.torch import load_file

    from cascadekit.generator.config import TrainConfig
    from cascadekit.generator.train import train

    store = tiny_store(tmp_path / "s.zarr", n=4)
    c = TrainConfig.from_dict(dict(model="tiny", batch_size=4, steps=1, save_every=1, lr=1e-6))
    res = train(store, c, tmp_path / "run", init=weights, text_encoder=FixedEmpty(), log=lambda m: None)
    got = load_file(str(res.last_checkpoint / "model.safetensors"))
    base = load_file(str(weights / "stage_c_lite.safetensors"))
    # one tiny step away from the folder's weights (not from a random init)
    assert max((got[k] - base[k]).abs().max().item() for k in base) < 1e-4
    assert json.loads((tmp_path / "run" / "run.json").read_text())["init"] == str(weights)


def test_defaults_are_the_official_notebook():
    import inspect

    from cascadekit.cli.sample import sample

    d = {k: v.default for k, v in inspect.signature(TextToImagePipeline.__call__).parameters.items()}
    assert (d["prior_steps"], d["prior_guidance"], d["prior_shift"], d["prior_cfg_rho"], d["prior_sampler"]) == \
        (20, 4.0, 2.0, 0.7, "ddpm")
    assert (d["decoder_steps"], d["decoder_guidance"], d["negative_prompt"], d["image"]) == (10, 1.1, None, None)
    cli = {p.name: p.default for p in sample.params}
    assert (cli["steps"], cli["guidance"], cli["shift"], cli["decoder_steps"], cli["decoder_guidance"]) == \
        (20, 4.0, 2.0, 10, 1.1)
    assert stage_c_latent_size(768, 1280) == (18, 30)  # non-square official sizes


def test_unconditional_is_the_empty_caption_with_zero_image_embedding(pipe):
    seen = []
    h = pipe.stage_c.register_forward_pre_hook(lambda m, a, k: seen.append({n: v.clone() for n, v in k.items()}),
                                               with_kwargs=True)
    try:
        img = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
        pipe("a fox", image=img, seed=1, return_latents=True, **{**SMALL, "prior_steps": 1})
    finally:
        h.remove()
    ci = torch.cat([s["clip_img"] for s in seen])
    ct = torch.cat([s["clip_text"] for s in seen])
    assert ci.shape[0] == 2  # one conditional and one unconditional row
    zero = [bool((r == 0).all()) for r in ci]
    assert sorted(zero) == [False, True]  # the unconditional row has a zero image embedding
    empty_text = pipe.empty[0][0]
    u = zero.index(True)
    torch.testing.assert_close(ct[u], empty_text.to(ct.dtype))
    assert not torch.allclose(ct[1 - u], empty_text.to(ct.dtype))
    # and no negative prompt == the empty caption as negative prompt
    a = pipe("a fox", seed=2, return_latents=True, **SMALL)
    b = pipe("a fox", negative_prompt="", seed=2, return_latents=True, **SMALL)
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-5, atol=1e-5)


def test_any_size_the_stages_support(pipe):
    out = pipe(["a", "b"], seed=0, height=70, width=100, prior_steps=2, decoder_steps=1)
    assert out.images.shape == (2, 3, 70, 100) and out.latents.shape == (2, 16, 2, 3)
    assert out.parameters[1]["height"] == 70 and out.parameters[1]["width"] == 100


def test_sample_command_image_variation_and_img2img(weights, tmp_path):
    from PIL import Image

    from cascadekit.cli.main import main

    src = tmp_path / "in.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(src)
    base = ["--weights", str(weights), "--steps", "2", "--decoder-steps", "1", "--height", "64", "--width", "64",
            "--seed", "5"]
    r = CliRunner().invoke(main, ["sample", "x", *base, "--out", str(tmp_path / "v"), "--image", str(src)])
    assert r.exit_code == 0, r.output
    p = read_png_parameters(next((tmp_path / "v").glob("image_*.png")))
    assert p["image_variation"] is True and p["init_image"] is False
    r = CliRunner().invoke(main, ["sample", "x", *base, "--out", str(tmp_path / "i"), "--init-image", str(src),
                                  "--strength", "0.5"])
    assert r.exit_code == 0, r.output
    p = read_png_parameters(next((tmp_path / "i").glob("image_*.png")))
    assert p["init_image"] is True and p["strength"] == 0.5 and p["prior_steps"] == 1


def test_random_seed_is_recorded_and_reproduces(pipe):
    a = pipe("a fox", seed=None, return_latents=True, **SMALL)
    s = a.parameters[0]["seed"]
    assert isinstance(s, int)
    b = pipe("a fox", seed=s, return_latents=True, **SMALL)
    assert torch.equal(a.latents, b.latents)


def test_sample_command_from_a_training_run_and_its_ema(weights, tmp_path):
    from generator_helpers import FixedEmpty

    from cascadekit.cli.main import main
    from cascadekit.generator.config import TrainConfig
    from cascadekit.generator.train import train

    store = tiny_store(tmp_path / "s.zarr", n=4)
    train(store, TrainConfig.from_dict(dict(model="tiny", batch_size=4, steps=2, save_every=2, lr=1e-2,
                                            ema_decay=0.5)),
          tmp_path / "run", text_encoder=FixedEmpty(), log=lambda m: None)
    args = ["sample", "a fox", "--weights", str(weights), "--steps", "2", "--decoder-steps", "1", "--height", "64",
            "--width", "64", "--seed", "3"]
    outs = {}
    for name, extra in [("base", []), ("run", ["--stage-c-weights", str(tmp_path / "run")]),
                        ("ema", ["--stage-c-weights", str(tmp_path / "run" / "checkpoints" / "step_000002"), "--ema"])]:
        r = CliRunner().invoke(main, args + ["--out", str(tmp_path / f"samples_{name}"), *extra])  # not the run folder
        assert r.exit_code == 0, r.output
        outs[name] = json.loads((tmp_path / f"samples_{name}" / "samples.json").read_text())["samples"][0]
    assert outs["run"]["stage_c_weights"].endswith("step_000002/model.safetensors")
    assert outs["ema"]["stage_c_weights"].endswith("step_000002/ema.safetensors")
    pngs = {k: (tmp_path / f"samples_{k}" / v["file"]).read_bytes() for k, v in outs.items()}
    assert len(set(pngs.values())) == 3  # base, trained and EMA weights give three different images
    r = CliRunner().invoke(main, args + ["--out", str(tmp_path / "x"), "--ema"])
    assert r.exit_code == 2 and "--stage-c-weights" in r.output


def test_load_stage_c_refuses_lora_checkpoints_and_other_layouts(pipe, tmp_path):
    import dataclasses

    from safetensors.torch import save_file

    from cascadekit.codec.errors import InputError, WeightsError
    from cascadekit.generator.stage_c import StageC, StageCConfig

    ck = tmp_path / "step_000001"
    ck.mkdir()
    (ck / "meta.json").write_text(json.dumps({"weights": "lora.safetensors", "ema": False}))
    with pytest.raises(InputError, match="--lora"):
        pipe.load_stage_c(ck)
    other = StageC.from_config(dataclasses.replace(StageCConfig.preset("tiny"), c_hidden=[16, 32], nhead=[2, 2]))
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    before = pipe.stage_c_weights
    with pytest.raises(WeightsError, match="does not fit"):
        pipe.load_stage_c(tmp_path / "other.safetensors")
    assert pipe.stage_c_weights == before
