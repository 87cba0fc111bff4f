"""The Stage B task on the training core: exact resume, DDP = one process, stored scales, streaming, bad input."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.generator.stage_b_data import STAGE_A_KEEP, StageBData
from cascadekit.generator.tasks.stage_b import StageBTask
from cascadekit.generator.tasks.stage_b_config import StageBTrainConfig
from cascadekit.generator.train_stage_b import train_stage_b
from ranks import run_ranks
from stage_b_helpers import C_CLIP_TINY, SMALL_B, ddp_worker, learnable_stage_a, simple_store, write_b_store

EMPTY = torch.zeros(1, 1, C_CLIP_TINY)


def _cfg(**kw):
    return StageBTrainConfig.from_dict({"preset": "tiny", "batch_size": 4, "steps": 4, "save_every": 2,
                                        "log_every": 1, **kw})


def _scaled_store(path, n=8, pooled=True):
    sa = learnable_stage_a(n, 8, 8)
    eff = torch.nn.functional.avg_pool2d(sa, 2).repeat(1, 4, 1, 1)  # (n,16,4,4)
    scales = {0.5: eff[..., ::2, ::2].contiguous(), 1.0: eff}
    return write_b_store(path, sa, eff, scales=scales,
                         pooled=torch.randn(n, 1, C_CLIP_TINY, generator=torch.Generator().manual_seed(2))
                         if pooled else None)


def _train(store, out, **kw):
    return train_stage_b(store, kw.pop("cfg", _cfg()), out, empty_pooled=EMPTY, model_overrides=SMALL_B,
                         log=lambda m: None, **kw)


def test_checkpoint_is_an_official_stage_b_file(tmp_path):
    store = simple_store(tmp_path / "s.zarr", side=8)
    res = _train(store, tmp_path / "run", cfg=_cfg(steps=2))
    sd = load_file(str(res.last_checkpoint / "stage_b_lite.safetensors"))
    from cascadekit.codec.models.stage_b import StageB, StageBConfig

    ref = StageB.from_config(StageBConfig(**{**StageBConfig.preset("tiny").kwargs(), **SMALL_B})).state_dict()
    assert list(sd) == sorted(ref) or set(sd) == set(ref)
    assert all(sd[k].shape == ref[k].shape for k in ref)
    assert res.history[-1]["loss"] > 0


def test_resume_is_bit_identical(tmp_path):
    store = _scaled_store(tmp_path / "s.zarr")
    cfg = _cfg(ema_decay=0.9, caption_dropout=0.5, effnet_dropout=0.3)
    _train(store, tmp_path / "a", cfg=cfg)
    _train(store, tmp_path / "b", cfg=cfg, stop_after=2)
    _train(store, tmp_path / "b", cfg=cfg, resume=True)
    for name in ("stage_b_lite.safetensors", "ema.safetensors"):
        a = (tmp_path / "a/checkpoints/step_000004" / name).read_bytes()
        b = (tmp_path / "b/checkpoints/step_000004" / name).read_bytes()
        assert a == b, name


def test_two_process_ddp_equals_one_process(tmp_path):
    from generator_helpers import assert_same_training_log

    store = _scaled_store(tmp_path / "s.zarr")
    cfg = {"preset": "tiny", "batch_size": 4, "steps": 3, "save_every": 3, "log_every": 1, "caption_dropout": 0.5,
           "effnet_dropout": 0.3}
    _train(store, tmp_path / "one", cfg=StageBTrainConfig.from_dict(cfg))
    run_ranks(ddp_worker, 2, (str(store), str(tmp_path / "two"), cfg, SMALL_B))
    assert_same_training_log(tmp_path / "one", tmp_path / "two", steps=3)
    a = load_file(str(tmp_path / "one/checkpoints/step_000003/stage_b_lite.safetensors"))
    b = load_file(str(tmp_path / "two/checkpoints/step_000003/stage_b_lite.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)


def test_one_stored_scale_per_sample_as_stage_b_would_resize_it(tmp_path):
    store = _scaled_store(tmp_path / "s.zarr", n=8)
    data = StageBData(store)
    task = StageBTask(_cfg(effnet_dropout=0.0), empty_pooled=EMPTY, model_overrides=SMALL_B, log=lambda m: None)
    assert task.check(data) == []
    group = data.groups[0]
    draws = task.draws(torch.Generator().manual_seed(0), 64, group)
    assert set(draws["slot"].tolist()) == {0, 1} and draws["noise"].shape == (64, 4, 8, 8)
    batch = data.read(group.name, list(range(8)))
    d = {k: v[:8] for k, v in draws.items()}
    x0, cond = task.inputs(batch, d, torch.device("cpu"))
    assert torch.equal(x0, batch["stage_a"]) and cond["effnet"].shape == (8, 16, 4, 4)
    torch.manual_seed(0)
    from cascadekit.codec.models.stage_b import StageB, StageBConfig

    model = StageB.from_config(task.model_cfg).eval()
    r = torch.rand(8)
    with torch.no_grad():
        joint = model(x0, r, effnet=cond["effnet"], clip=cond["clip"])
        for i in range(8):
            s = int(d["slot"][i])
            h, w = batch["effnet_scale_sizes"][s].tolist()
            alone = model(x0[i:i + 1], r[i:i + 1], effnet=batch["effnet_scales"][i:i + 1, s, :, :h, :w],
                          clip=cond["clip"][i:i + 1])
            assert torch.allclose(joint[i:i + 1], alone, atol=1e-5)
    # stored pooled embeddings; dropped captions get the empty caption's
    drop = torch.tensor([True, False] * 4)
    clip = task._clip(batch, drop, torch.device("cpu"))
    assert torch.equal(clip[1], batch["clip_text_pooled"][1]) and torch.equal(clip[0], EMPTY[0])


def test_without_stored_scales_the_latents_are_used_and_logged(tmp_path):
    store = simple_store(tmp_path / "s.zarr", side=8)
    said = []
    task = StageBTask(_cfg(), empty_pooled=EMPTY, model_overrides=SMALL_B, log=said.append)
    assert task.check(StageBData(store)) == []
    assert any("no stored EfficientNet scales" in m for m in said)
    assert any("empty caption" in m for m in said)
    asked = StageBTask(_cfg(effnet_scales=[0.5]), empty_pooled=EMPTY, model_overrides=SMALL_B, log=said.append)
    assert any("--effnet-scales" in e for e in asked.check(StageBData(store)))


def test_stage_a_rows_are_streamed(tmp_path):
    n = 96
    sa = learnable_stage_a(n, 8, 8)
    store = write_b_store(tmp_path / "s.zarr", sa, torch.ones(n, 16, 2, 2), chunk_rows=2)
    from cascadekit.generator.batches import BatchPlan

    data = StageBData(store)
    g = data.groups[0]
    assert g.chunk == 2 and g.shape == (4, 8, 8)
    plan = BatchPlan(data.groups, 4, seed=0)
    most = 0
    for k in range(2 * plan.batches_per_epoch):
        grp, idx, _ = plan.batch(k)
        batch = data.read(grp.name, idx)
        assert torch.equal(batch["stage_a"], sa[idx])
        most = max(most, data.cached_chunks(grp.name))
    assert 0 < most <= STAGE_A_KEEP < n // 2


def test_bad_input_is_refused_before_any_work(tmp_path, tiny_weights):
    no_a = write_b_store(tmp_path / "no_a.zarr", learnable_stage_a(4, 8, 8), torch.zeros(4, 16, 2, 2),
                         with_stage_a=False)
    with pytest.raises(InputError, match="--stage-a"):
        _train(no_a, tmp_path / "r1")
    assert not (tmp_path / "r1").exists()
    odd = write_b_store(tmp_path / "odd.zarr", learnable_stage_a(4, 10, 10), torch.zeros(4, 16, 2, 2))
    with pytest.raises(InputError, match="multiples of 4"):
        _train(odd, tmp_path / "r2")
    three = write_b_store(tmp_path / "c3.zarr", learnable_stage_a(4, 8, 8)[:, :3], torch.zeros(4, 16, 2, 2))
    with pytest.raises(InputError, match="3 channels"):
        _train(three, tmp_path / "r3")
    wide = write_b_store(tmp_path / "w.zarr", learnable_stage_a(4, 8, 8), torch.zeros(4, 16, 2, 2),
                         pooled=torch.zeros(4, 1, 48))
    with pytest.raises(InputError, match="width 48"):
        _train(wide, tmp_path / "r4")
    # a Stage B preset that does not match the file: the tiny set's Stage B with `model: lite`
    good = simple_store(tmp_path / "s.zarr", side=32)
    lite = StageBTrainConfig.from_dict({"preset": "tiny", "model": "lite", "batch_size": 4})
    with pytest.raises(InputError, match="holds the 'tiny' Stage B.*model 'lite'"):
        train_stage_b(good, lite, tmp_path / "r5", init=tiny_weights / "stage_b_lite.safetensors", empty_pooled=EMPTY,
                      log=lambda m: None)
    for r in ("r2", "r3", "r4", "r5"):
        assert not (tmp_path / r / "checkpoints").exists()


def test_fine_tuned_weights_in_a_codec(tmp_path, tiny_weights):
    import warnings

    from cascadekit.codec.codec import Codec
    from cascadekit.generator.stage_b_weights import stage_b_weights_file, use_stage_b_weights

    store = simple_store(tmp_path / "s.zarr", side=32)
    cfg = _cfg(steps=2, ema_decay=0.5)
    res = train_stage_b(store, cfg, tmp_path / "run", empty_pooled=EMPTY, log=lambda m: None)  # tiny preset, random
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codec = Codec.from_pretrained(tiny_weights, device="cpu", dtype="fp32")
    before = codec.identity()["checkpoints"]["stage_b"]["sha256"]
    f = use_stage_b_weights(codec, tmp_path / "run")
    assert f == res.last_checkpoint / "stage_b_lite.safetensors"
    trained = load_file(str(f))
    assert all(torch.equal(v, trained[k]) for k, v in codec.stage_b.state_dict().items())
    assert codec.identity()["checkpoints"]["stage_b"]["sha256"] != before
    assert stage_b_weights_file(res.last_checkpoint, ema=True).name == "ema.safetensors"
    use_stage_b_weights(codec, tmp_path / "run", ema=True)
    z = torch.zeros(1, 16, 2, 2)
    assert codec.decode(z, steps=2, seed=0, size=(128, 128)).shape == (1, 3, 128, 128)
    with pytest.raises(InputError, match="neither a training run nor a checkpoint"):
        use_stage_b_weights(codec, tmp_path)
    small = _train(simple_store(tmp_path / "s8.zarr", side=8), tmp_path / "small", cfg=_cfg(steps=2))
    with pytest.raises(WeightsError, match="does not fit the loaded Stage B"):
        use_stage_b_weights(codec, small.run_dir)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from _tiny_weights import tiny_weights_dir

    return tiny_weights_dir(tmp_path_factory)
