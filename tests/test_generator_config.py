"""TrainConfig presets/loading/validation, the batch plan, checkpoint atomicity, conditioning, EMA."""
from __future__ import annotations

import json

import pytest
import torch

from cascadekit.codec.errors import InputError
from cascadekit.generator import checkpoint as ckpt
from cascadekit.generator.batches import BatchPlan, Group
from cascadekit.generator.conditioning import Conditioner, EmptyCaption
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.ema import EMA


def test_presets_and_files(tmp_path):
    big = TrainConfig.preset("finetune_c_big")
    assert big.model == "big" and big.loss_weighting == "adaptive" and big.fsdp
    assert TrainConfig().caption_dropout == 0.05 and TrainConfig().grad_clip == 1.0
    (tmp_path / "a.yaml").write_text("preset: tiny\nlr: 0.002\nadam_betas: [0.9, 0.95]\n")
    (tmp_path / "a.json").write_text(json.dumps({"preset": "tiny", "lr": 0.002, "adam_betas": [0.9, 0.95]}))
    (tmp_path / "a.toml").write_text('preset = "tiny"\nlr = 0.002\nadam_betas = [0.9, 0.95]\n')
    loaded = [TrainConfig.from_file(tmp_path / f"a.{e}") for e in ("yaml", "json", "toml")]
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0].model == "tiny" and loaded[0].adam_betas == (0.9, 0.95)
    assert TrainConfig.from_file("tiny") == TrainConfig.preset("tiny")


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    """PyYAML reads `1e-4` (no dot) as a string; a config with `lr: 1e-4` must still work."""
    (tmp_path / "e.yaml").write_text("preset: tiny\nlr: 1e-4\nadam_eps: 1E-6\nweight_decay: 0\n")
    c = TrainConfig.from_file(tmp_path / "e.yaml")
    assert c.lr == 1e-4 and c.adam_eps == 1e-6 and c.weight_decay == 0


@pytest.mark.parametrize("bad, msg", [
    ({"lr": 0}, "lr must be"),
    ({"lr": "fast"}, "lr must be"),
    ({"steps": 0}, "steps must be"),
    ({"batch_size": 6, "grad_accum_steps": 4}, "divisible"),
    ({"caption_dropout": 1.5}, "caption_dropout"),
    ({"loss_weighting": "snr"}, "loss_weighting"),
    ({"model": "huge"}, "model must be"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"fsdp": True, "lora_rank": 4}, "LoRA"),
    ({"precision": "fp16"}, "precision"),
    ({"lora_targets": []}, "lora_targets"),
    ({"learning_rate": 1e-4}, "unknown training config key"),
])
def test_bad_values_are_named(bad, msg):
    with pytest.raises(InputError, match=msg):
        TrainConfig.from_dict({"model": "tiny", **bad})


def test_bad_files(tmp_path):
    (tmp_path / "x.yaml").write_text("lr: [1, 2\n")
    with pytest.raises(InputError, match="could not be parsed"):
        TrainConfig.from_file(tmp_path / "x.yaml")
    (tmp_path / "x.ini").write_text("a=1")
    with pytest.raises(InputError, match="extension"):
        TrainConfig.from_file(tmp_path / "x.ini")
    with pytest.raises(InputError, match="does not exist"):
        TrainConfig.from_file(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="do not split over 3"):
        TrainConfig.from_dict({"batch_size": 4}).micro_batch(3)


def test_batch_plan_is_deterministic_world_size_independent_and_bucket_pure():
    groups = [Group("a", 10, (16, 4, 4)), Group("b", 7, (16, 4, 6))]
    plan = BatchPlan(groups, 2, seed=3)
    assert plan.batches_per_epoch == 5 + 3
    seen = []
    for k in range(plan.batches_per_epoch):
        g, idx, ep = plan.batch(k)
        assert ep == 0 and len(idx) == 2 and max(idx) < g.size
        r0, r1 = plan.batch(k, 0, 2)[1], plan.batch(k, 1, 2)[1]
        assert r0 + r1 == idx  # two ranks split the same global batch
        seen += [(g.name, i) for i in idx]
    assert len(set(seen)) == len(seen)  # no sample twice in an epoch
    again = BatchPlan(groups, 2, seed=3)
    assert [again.batch(k)[1] for k in range(16)] == [plan.batch(k)[1] for k in range(16)]
    assert plan.batch(8)[2] == 1 and [plan.batch(k)[1] for k in range(8)] != [plan.batch(k)[1] for k in range(8, 16)]
    assert [BatchPlan(groups, 2, seed=4).batch(k)[1] for k in range(8)] != [plan.batch(k)[1] for k in range(8)]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    w = {"a": torch.arange(4.0)}
    ckpt.save_checkpoint(tmp_path, 1, weights=w, state={"step": 1, "rng": ckpt.rng_state()})
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000001"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 2, weights={"a": torch.zeros(4)}, state={"step": 2})
    monkeypatch.undo()
    last = ckpt.latest_checkpoint(tmp_path)
    assert last.name == "step_000001" and not list((tmp_path / "checkpoints").glob(".tmp-*"))
    got = ckpt.load_checkpoint(last)
    assert torch.equal(got["weights"]["a"], w["a"]) and got["state"]["step"] == 1
    for s in (2, 3, 4):
        ckpt.save_checkpoint(tmp_path, s, weights=w, state={"step": s}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000003", "step_000004"]


def test_rng_state_round_trip():
    import random

    import numpy as np

    st = ckpt.rng_state()
    a = (random.random(), float(np.random.rand()), torch.rand(3))
    ckpt.set_rng_state(st)
    b = (random.random(), float(np.random.rand()), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_conditioning_dropout_uses_empty_caption_not_zeros():
    empty = EmptyCaption(torch.full((1, 5, 4), 2.0), torch.full((1, 1, 3), 3.0))
    cond = Conditioner(c_clip_img=6, empty=empty)
    batch = {"clip_text": torch.ones(3, 5, 4), "clip_text_pooled": torch.ones(3, 1, 3), "clip_img": torch.full((3, 1, 6), 7.0)}
    out = cond(batch, torch.tensor([False, True, False]), torch.tensor([True, False, False]), "cpu")
    assert torch.equal(out["clip_text"][1], torch.full((5, 4), 2.0)) and torch.equal(out["clip_text"][0], torch.ones(5, 4))
    assert torch.equal(out["clip_text_pooled"][1], torch.full((1, 3), 3.0))
    assert torch.equal(out["clip_img"][0], torch.full((1, 6), 7.0)) and not out["clip_img"][1:].any()
    u = cond.unconditional(2, "cpu")
    assert torch.equal(u["clip_text"], torch.full((2, 5, 4), 2.0)) and not u["clip_img"].any()


def test_ema_follows_the_official_update():
    p = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([("p", p)], decay=0.9, start_step=1)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update([("p", p)], step=1)  # before/at start: copy
    assert torch.equal(ema.shadow["p"], torch.ones(2))
    with torch.no_grad():
        p.fill_(2.0)
    ema.update([("p", p)], step=2)
    torch.testing.assert_close(ema.shadow["p"], torch.full((2,), 0.9 * 1 + 0.1 * 2))


def test_chunk_aware_shuffle_touches_few_chunks():
    plan = BatchPlan([Group("a", 64, (16, 2, 2), chunk=4)], 8, seed=0, window=2)
    order = []
    for k in range(plan.batches_per_epoch):
        idx = plan.batch(k)[1]
        assert len({i // 4 for i in idx}) <= 2  # one window = 2 chunks
        order += idx
    assert sorted(order) == list(range(64)) and order != list(range(64))
    assert [i // 4 for i in order[:8]] != [0] * 4 + [1] * 4  # the chunk order is permuted too (seed 0)


def test_store_reader_returns_requested_rows_in_order(tmp_path):
    from generator_helpers import random_embeddings, write_store

    from cascadekit.generator.data import open_store

    lat = torch.randn(13, 16, 2, 3)
    emb = random_embeddings(13)
    s = write_store(tmp_path / "r.zarr", {"": lat}, embeddings={"": emb}, chunk_rows=4)
    data = open_store(s)
    assert data.groups[0].chunk == 4 and data.groups[0].size == 13
    idx = [12, 0, 5, 4, 11, 3]
    b = data.read(data.groups[0].name, idx)
    assert torch.equal(b["latents"], lat[idx])
    assert torch.equal(b["clip_text"], emb[0][idx]) and b["captions"] == [f"caption {i}" for i in idx]
