"""The released training recipe, step by step through the Trainer: what the network sees (caption dropout
-> empty-caption embeddings, stored image embeddings on a fraction of samples), P2 vs adaptive weights,
warm-up / cosine learning rate, gradient clipping, EMA of the trained weights."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from generator_helpers import FixedEmpty, structured_latents

from cascadekit.codec.diffusion.loss_weights import p2_loss_weight
from cascadekit.generator.checkpoint import load_checkpoint
from cascadekit.generator.conditioning import EmptyCaption
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.data import TensorData
from cascadekit.generator.train import Trainer

QUIET = dict(log=lambda m: None)
N = 8


def cfg(**kw) -> TrainConfig:
    base = dict(model="tiny", batch_size=4, steps=2, lr=1e-3, warmup_steps=1, log_every=1, save_every=100)
    base.update(kw)
    return TrainConfig.from_dict(base)


def _data() -> TensorData:
    g = torch.Generator().manual_seed(3)
    empty = EmptyCaption(torch.full((1, 8, 32), -5.0), torch.full((1, 1, 32), -6.0))
    return TensorData(structured_latents(N), [f"c{i}" for i in range(N)],
                      clip_text=torch.randn(N, 8, 32, generator=g), clip_text_pooled=torch.randn(N, 1, 32, generator=g),
                      clip_img=torch.randn(N, 1, 24, generator=g) + 10, empty=empty)


def _trainer(tmp_path, data=None, **kw) -> Trainer:
    return Trainer(data if data is not None else _data(), cfg(**kw), tmp_path / "run", device="cpu",
                   text_encoder=None, **QUIET)


def _seen_inputs(trainer: Trainer, steps: int = 1) -> list[dict[str, torch.Tensor]]:
    seen = []
    h = trainer.model.register_forward_pre_hook(lambda m, a, k: seen.append({n: v.detach().clone() for n, v in k.items()}),
                                                with_kwargs=True)
    try:
        for _ in range(steps):
            trainer.train_step()
    finally:
        h.remove()
    return seen


def _rows_in(rows: torch.Tensor, table: torch.Tensor) -> bool:
    return all(any(torch.equal(r, t) for t in table) for r in rows)


def test_defaults_are_the_released_recipe():
    c = TrainConfig()
    assert c.caption_dropout == 0.05 and c.grad_clip == 1.0 and c.loss_weighting == "p2" and c.warmup_steps >= 1
    assert c.precision == "auto"  # bf16 autocast on CUDA


def test_caption_dropout_gives_the_empty_caption_and_image_embeddings_are_used_when_drawn(tmp_path):
    data = _data()
    t = _trainer(tmp_path / "a", data, caption_dropout=1.0, image_embedding_fraction=1.0)
    (inp,) = _seen_inputs(t)
    t.close()
    assert torch.equal(inp["clip_text"], data.empty.clip_text.expand(4, -1, -1))
    assert torch.equal(inp["clip_text_pooled"], data.empty.clip_text_pooled.expand(4, -1, -1))
    assert _rows_in(inp["clip_img"], data_field(data, "clip_img"))  # the stored image embeddings, not zeros
    t = _trainer(tmp_path / "b", data, caption_dropout=0.0, image_embedding_fraction=0.0)
    (inp,) = _seen_inputs(t)
    t.close()
    assert _rows_in(inp["clip_text"], data_field(data, "clip_text"))
    assert not inp["clip_img"].any()  # zeros: the released "no image" input


def data_field(data, name):
    return data.read(data.groups[0].name, list(range(N)))[name]


def test_dropout_and_image_fractions_follow_the_config(tmp_path):
    t = _trainer(tmp_path, caption_dropout=0.05, image_embedding_fraction=0.1)
    drop, img = [], []
    for s in range(300):  # 1200 deterministic draws
        t.step = s
        d = t._update_draws()
        drop.append(d["drop"])
        img.append(d["use_img"])
    t.close()
    fd, fi = torch.cat(drop).float().mean().item(), torch.cat(img).float().mean().item()
    assert 0.03 < fd < 0.075 and 0.07 < fi < 0.13, (fd, fi)


def test_p2_and_adaptive_loss_weights(tmp_path):
    t = _trainer(tmp_path / "p2", loss_weighting="p2")
    draws = t._update_draws()
    *_, weight, logsnr, _ = t._micro_batch(0, draws)
    torch.testing.assert_close(weight, p2_loss_weight(logsnr))
    t.close()
    t = _trainer(tmp_path / "ad", loss_weighting="adaptive")
    *_, weight, logsnr, _ = t._micro_batch(0, t._update_draws())
    assert torch.equal(weight, torch.ones(4))  # fresh buckets: weight 1 / 1
    before = t.gdf.state_dict()["adaptive.bucket_losses"].clone()
    t.train_step()
    after = t.gdf.state_dict()["adaptive.bucket_losses"]
    assert (after != before).sum() >= 1  # the buckets hit by the batch moved
    t.close()


def test_warmup_then_constant_or_cosine(tmp_path):
    t = _trainer(tmp_path / "c", steps=6, warmup_steps=3, lr=1e-3)
    lrs = [t.train_step()["lr"] for _ in range(6)]
    t.close()
    torch.testing.assert_close(torch.tensor(lrs), torch.tensor([1 / 3, 2 / 3, 1, 1, 1, 1]) * 1e-3)
    # cosine after warm-up: 1 at the first post-warm-up update, cos-decay over the remaining updates
    t = _trainer(tmp_path / "cos", steps=6, warmup_steps=3, lr=1e-3, lr_schedule="cosine")
    lrs = [t.train_step()["lr"] for _ in range(6)]
    t.close()
    torch.testing.assert_close(torch.tensor(lrs), torch.tensor([1 / 3, 2 / 3, 1, 1, 0.75, 0.25]) * 1e-3,
                               atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("clip", [1e-3, 1e9])
def test_gradients_are_clipped_before_the_update(tmp_path, clip):
    t = _trainer(tmp_path, grad_clip=clip)
    norms = []
    t.optimizer.register_step_pre_hook(
        lambda opt, a, k: norms.append(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for g in opt.param_groups for p in g["params"]
                         if p.grad is not None])).item()))
    rec = [t.train_step() for _ in range(2)]
    t.close()
    for r, n in zip(rec, norms):
        assert r["grad_norm"] > 1e-3  # the logged norm is the one before clipping
        if clip < 1:
            assert n == pytest.approx(clip, rel=1e-4)
        else:
            assert n == pytest.approx(r["grad_norm"], rel=1e-5)


def test_ema_of_the_trained_weights_is_checkpointed(tmp_path):
    from cascadekit.generator.train import train

    res = train(_data(), cfg(steps=2, save_every=1, keep_checkpoints=3, ema_decay=0.75), tmp_path / "run",
                text_encoder=FixedEmpty(), **QUIET)
    c1 = load_checkpoint(res.last_checkpoint.parent / "step_000001")
    c2 = load_checkpoint(res.last_checkpoint)
    for k, w2 in c2["weights"].items():
        # step 1 (== ema_start_step 0 + 1 > 0): shadow = 0.75 * init + 0.25 * w1; step 2: 0.75 * ema1 + 0.25 * w2
        torch.testing.assert_close(c2["ema"][k], 0.75 * c1["ema"][k] + 0.25 * w2, rtol=1e-6, atol=1e-7, msg=k)
    assert any(not torch.equal(c2["ema"][k], c2["weights"][k]) for k in c2["weights"])
    # ema.safetensors holds official Stage C keys too: it loads into StageC as is
    from cascadekit.codec.weights.assign import load_into
    from cascadekit.generator.stage_c import StageC, StageCConfig

    load_into(StageC.from_config(StageCConfig.preset("tiny")), c2["ema"])


def test_bf16_autocast_keeps_float32_master_weights(tmp_path):
    t32 = _trainer(tmp_path / "a", precision="fp32")
    r32 = t32.train_step()
    t32.close()
    t16 = _trainer(tmp_path / "b", precision="bf16")
    assert t16.autocast_dtype == torch.bfloat16
    r16 = t16.train_step()
    assert all(p.dtype == torch.float32 for p in t16.model.parameters())
    t16.close()
    # the official init zeroes the output conv (same first loss): the gradients show that autocast ran
    g16, g32 = r16["grad_norm"], r32["grad_norm"]
    assert g16 != g32 and abs(g16 - g32) < 0.05 * g32
    assert _trainer(tmp_path / "c", precision="auto").autocast_dtype is None  # CPU: fp32 (bf16 on CUDA)
