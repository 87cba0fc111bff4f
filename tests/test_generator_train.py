"""Stage C training on tiny latent stores: learning, exact resume, NaN stop, checks before training, reload."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from generator_helpers import FixedEmpty, random_embeddings, structured_latents, tiny_store, write_store
from safetensors.torch import load_file, save_file

from cascadekit.codec.errors import InputError
from cascadekit.codec.weights.assign import load_into
from cascadekit.generator.checkpoint import latest_checkpoint, load_checkpoint
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.stage_c import StageC, StageCConfig
from cascadekit.generator.train import TrainingDivergedError, train

QUIET = dict(log=lambda m: None)


def cfg(**kw) -> TrainConfig:
    base = dict(model="tiny", batch_size=4, steps=6, lr=2e-3, warmup_steps=2, log_every=1, save_every=3,
                keep_checkpoints=3)
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tiny_store(tmp_path_factory.mktemp("gen_store") / "s.zarr", n=8)


def _fixed_loss(model: StageC, latents: torch.Tensor, emb) -> float:
    """Epsilon MSE on fixed noise at fixed t (independent of training randomness)."""
    from cascadekit.codec.diffusion.gdf import GDF

    g = torch.Generator().manual_seed(123)
    n = latents.shape[0]
    model.eval()
    losses = []
    with torch.no_grad():
        for t in (0.3, 0.5, 0.7, 0.9):
            noise = torch.randn(latents.shape, generator=g)
            d = GDF().diffuse(latents, torch.full((n,), t), noise)
            pred = model(d.x_t, d.noise_cond, emb[0], emb[1], torch.zeros(n, 1, 24))
            losses.append(torch.mean((pred - d.target) ** 2).item())
    return sum(losses) / len(losses)


def test_tiny_model_learns_the_store(tmp_path, store):
    torch.manual_seed(0)
    init = StageC.from_config(StageCConfig.preset("tiny"))
    save_file(init.state_dict(), str(tmp_path / "init.safetensors"))
    before = _fixed_loss(init, structured_latents(8), random_embeddings(8))
    res = train(store, cfg(steps=30, lr=3e-3, save_every=30, log_every=5), tmp_path / "run",
                init=tmp_path / "init.safetensors", text_encoder=FixedEmpty(), **QUIET)
    model = StageC.from_config(StageCConfig.preset("tiny"))
    load_into(model, load_file(str(res.last_checkpoint / "model.safetensors")))
    after = _fixed_loss(model, structured_latents(8), random_embeddings(8))
    assert after < 0.75 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "grad_norm", "samples_per_s"} <= set(log[-1])
    assert log[-1]["step"] == 30 and all(r["grad_norm"] > 0 for r in log)


def test_resume_is_bit_exact(tmp_path, store):
    c = cfg(steps=6, save_every=3, ema_decay=0.9, loss_weighting="adaptive", grad_accum_steps=2)
    straight = train(store, c, tmp_path / "a", text_encoder=FixedEmpty(), **QUIET)
    # "killed" after step 4: its last checkpoint is step 3, step 4 is lost and must be redone identically
    first = train(store, c, tmp_path / "b", text_encoder=FixedEmpty(), stop_after=4, **QUIET)
    assert first.step == 4 and latest_checkpoint(tmp_path / "b").name == "step_000003"
    torch.manual_seed(1234)  # a resumed process starts with whatever global RNG state
    second = train(store, c, tmp_path / "b", resume=True, text_encoder=FixedEmpty(), **QUIET)
    assert second.step == 6
    a, b = load_checkpoint(straight.last_checkpoint), load_checkpoint(second.last_checkpoint)
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert torch.equal(a["state"]["gdf"]["adaptive.bucket_losses"], b["state"]["gdf"]["adaptive.bucket_losses"])
    assert [h["loss"] for h in straight.history[3:]] == [h["loss"] for h in second.history]
    log_a = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k not in ("time", "samples_per_s", "step_time_s")}
             for x in log_a], [{k: v for k, v in json.loads(x).items() if k not in ("time", "samples_per_s", "step_time_s")}
                               for x in log_b]
    assert strip[0] == strip[1]  # one line per step, no duplicates after the resume
    # the checkpoint loads into the official-key StageC
    load_into(StageC.from_config(StageCConfig.preset("tiny")), b["weights"])


def test_existing_run_needs_resume_flag_and_same_maths(tmp_path, store):
    train(store, cfg(steps=1, save_every=1), tmp_path / "r", text_encoder=FixedEmpty(), **QUIET)
    with pytest.raises(InputError, match="--resume"):
        train(store, cfg(steps=2), tmp_path / "r", text_encoder=FixedEmpty(), **QUIET)
    with pytest.raises(InputError, match="lr"):
        train(store, cfg(steps=2, lr=1e-2), tmp_path / "r", resume=True, text_encoder=FixedEmpty(), **QUIET)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    from cascadekit.generator.batches import BatchPlan, Group

    bad = tiny_store(tmp_path / "nan.zarr", n=8, nan_row=5)
    plan = BatchPlan([Group("root", 8, (16, 4, 4))], 4, seed=0)
    first_bad = next(k for k in range(20) if 5 in plan.batch(k)[1])
    c = cfg(steps=first_bad + 3, save_every=1)
    with pytest.raises(TrainingDivergedError, match="not finite") as e:
        train(bad, c, tmp_path / "run", text_encoder=FixedEmpty(), **QUIET)
    assert "store for NaN" in str(e.value)
    last = latest_checkpoint(tmp_path / "run")
    if first_bad == 0:
        assert last is None
    else:
        assert last.name == f"step_{first_bad:06d}"
        w = load_checkpoint(last)["weights"]
        assert all(torch.isfinite(v).all() for v in w.values())
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


def test_errors_before_training(tmp_path):
    lat = structured_latents(4)
    no_caps = write_store(tmp_path / "nocap.zarr", {"": lat}, captions={"": [""] * 4})
    with pytest.raises(InputError, match="neither captions nor text embeddings"):
        train(no_caps, cfg(), tmp_path / "r1", **QUIET)
    caps_only = write_store(tmp_path / "caps.zarr", {"": lat})
    with pytest.raises(InputError, match="embed-text"):
        train(caps_only, cfg(), tmp_path / "r2", **QUIET)
    wrong = write_store(tmp_path / "c4.zarr", {"": torch.randn(4, 4, 4, 4)}, embeddings={"": random_embeddings(4)})
    with pytest.raises(InputError, match="4 channels, Stage C expects 16"):
        train(wrong, cfg(), tmp_path / "r3", text_encoder=FixedEmpty(), **QUIET)
    with pytest.raises(InputError, match="does not exist"):
        train(tmp_path / "missing.zarr", cfg(), tmp_path / "r4", **QUIET)
    small = write_store(tmp_path / "small.zarr", {"": lat[:2]}, embeddings={"": random_embeddings(2)})
    with pytest.raises(InputError, match="batch_size=4"):
        train(small, cfg(), tmp_path / "r5", text_encoder=FixedEmpty(), **QUIET)
    for folder in ("r1", "r2", "r3", "r5"):
        assert not (tmp_path / folder / "checkpoints").exists()


def test_buckets_give_single_shape_batches(tmp_path):
    from cascadekit.generator.data import open_store

    groups = {"buckets/128x128": structured_latents(8, 4, 4), "buckets/128x192": structured_latents(4, 4, 6)}
    emb = {k: random_embeddings(v.shape[0], seed=i) for i, (k, v) in enumerate(groups.items())}
    s = write_store(tmp_path / "b.zarr", groups, embeddings=emb)
    data = open_store(s)
    assert sorted(g.shape for g in data.groups) == [(16, 4, 4), (16, 4, 6)]
    res = train(data, cfg(steps=3, save_every=3, preview_every=0), tmp_path / "run", text_encoder=FixedEmpty(),
                **QUIET)
    assert res.step == 3
    from cascadekit.generator.batches import BatchPlan

    plan = BatchPlan(data.groups, 4, seed=0)
    shapes = {plan.batch(k)[0].shape for k in range(plan.batches_per_epoch)}
    assert shapes == {(16, 4, 4), (16, 4, 6)}  # both buckets are visited, never mixed in a batch


def test_previews_are_written_as_png_grids(tmp_path, store):
    from PIL import Image

    from cascadekit.codec.models.previewer import Previewer, PreviewerConfig

    torch.manual_seed(0)
    prev = Previewer(**PreviewerConfig.preset("tiny").kwargs()).eval()
    res = train(store, cfg(steps=2, save_every=2, preview_every=2, preview_steps=2, preview_count=3, ema_decay=0.5),
                tmp_path / "run", text_encoder=FixedEmpty(), previewer=prev, **QUIET)
    png = tmp_path / "run" / "previews" / "step_000002.png"
    assert png.is_file()
    with Image.open(png) as im:
        w, h = im.size
    assert w > 3 * 32 and h > 2 * 32  # 3 columns (samples), 2 rows (store latents, samples) of 8x-upscaled 4x4 latents
    # previews do not disturb training: same weights as a run without previews
    plain = train(store, cfg(steps=2, save_every=2, ema_decay=0.5), tmp_path / "plain", text_encoder=FixedEmpty(),
                  **QUIET)
    a, b = load_checkpoint(res.last_checkpoint), load_checkpoint(plain.last_checkpoint)
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


def test_gradient_checkpointing_gives_the_same_training(tmp_path, store):
    a = train(store, cfg(steps=2, save_every=2), tmp_path / "a", text_encoder=FixedEmpty(), **QUIET)
    b = train(store, cfg(steps=2, save_every=2, gradient_checkpointing=True), tmp_path / "b",
              text_encoder=FixedEmpty(), **QUIET)
    wa, wb = load_checkpoint(a.last_checkpoint)["weights"], load_checkpoint(b.last_checkpoint)["weights"]
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    assert any(not torch.equal(wa[k], v) for k, v in StageC.from_config(StageCConfig.preset("tiny")).state_dict().items())


def test_tensorboard_option(tmp_path, store):
    import importlib.util

    c = cfg(steps=1, save_every=1, tensorboard=True)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(InputError, match="pip install tensorboard"):
            train(store, c, tmp_path / "run", text_encoder=FixedEmpty(), **QUIET)
        assert not (tmp_path / "run" / "checkpoints").exists()
    else:
        train(store, c, tmp_path / "run", text_encoder=FixedEmpty(), **QUIET)
        assert list((tmp_path / "run" / "tensorboard").glob("events.*"))


def test_text_embedding_width_must_match_the_model(tmp_path):
    from cascadekit.generator.data import TensorData

    data = TensorData(structured_latents(4), ["a"] * 4, clip_text=torch.randn(4, 8, 48),
                      clip_text_pooled=torch.randn(4, 1, 32), clip_img=torch.randn(4, 1, 7))
    with pytest.raises(InputError) as e:
        train(data, cfg(), tmp_path / "r", text_encoder=FixedEmpty(), **QUIET)
    assert "clip_text width 48" in str(e.value) and "clip_img width 7" in str(e.value)


@pytest.mark.parametrize("weighting", ["p2", "adaptive"])
def test_gradient_accumulation_equals_the_full_batch(tmp_path, store, weighting):
    """batch_size 8 as 2 accumulated micro-batches of 4 == one batch of 8: same samples, same draws."""
    no_dropout = {"dropout": [0.0, 0.0]}  # dropout masks depend on the micro-batch shape
    c = dict(batch_size=8, steps=2, save_every=2, caption_dropout=0.5, loss_weighting=weighting)
    full = train(store, cfg(**c), tmp_path / "full", text_encoder=FixedEmpty(), model_overrides=no_dropout, **QUIET)
    acc = train(store, cfg(**c, grad_accum_steps=2), tmp_path / "acc", text_encoder=FixedEmpty(),
                model_overrides=no_dropout, **QUIET)
    a, b = load_checkpoint(full.last_checkpoint), load_checkpoint(acc.last_checkpoint)
    assert all(h["grad_norm"] > 1e-6 for h in full.history)  # real updates, not two untouched inits
    for k in a["weights"]:
        torch.testing.assert_close(b["weights"][k], a["weights"][k], rtol=1e-4, atol=2e-6, msg=k)
    for ha, hb in zip(full.history, acc.history):
        assert abs(ha["loss"] - hb["loss"]) < 1e-5 and abs(ha["grad_norm"] - hb["grad_norm"]) < 1e-4 * ha["grad_norm"]
    if weighting == "adaptive":
        torch.testing.assert_close(b["state"]["gdf"]["adaptive.bucket_losses"],
                                   a["state"]["gdf"]["adaptive.bucket_losses"])

