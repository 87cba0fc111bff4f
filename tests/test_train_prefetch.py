"""The trainer's read-ahead (generator/training/prefetch.py): the same batches as synchronous reads (shuffle, several
epochs, grad accumulation and DDP slices, two buckets), a damaged chunk raised at the batch that needs it with the
message a synchronous read gives, and no read-ahead thread left once training returns or raises."""
from __future__ import annotations

import threading

import pytest
import torch
from generator_helpers import random_embeddings, structured_latents, tiny_store, write_store
from store_helpers import chunk_file, flip_byte
from test_training_core import QUIET, ToyTask, toy_cfg

from cascadekit.codec.errors import InputError
from cascadekit.generator.batches import BatchPlan
from cascadekit.generator.data import TensorData, open_train_data
from cascadekit.generator.training.loop import TrainingLoop
from cascadekit.generator.training.prefetch import ReadAhead, ReadAheadSettings


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cascadekit-read-ahead")]


@pytest.fixture(scope="module")
def buckets(tmp_path_factory):
    """Two buckets (24 and 16 samples, chunks of 4 rows) with text embeddings."""
    groups = {"buckets/4x4": structured_latents(24, 4, 4, seed=1), "buckets/4x6": structured_latents(16, 4, 6, seed=2)}
    emb = {g: random_embeddings(x.shape[0], seed=i) for i, (g, x) in enumerate(groups.items())}
    return write_store(tmp_path_factory.mktemp("ra") / "s.zarr", groups, embeddings=emb, chunk_rows=4)


def _keys(plan: BatchPlan, updates: int, parts: int, rank: int, world: int):
    """The micro-batches of ``rank`` (``parts // world`` per update), as TrainingLoop._micro_keys orders them."""
    for s in range(updates):
        for m in range(parts // world):
            g, idx, _ = plan.batch(s, m * world + rank, parts)
            yield g.name, idx


@pytest.mark.parametrize("accum,world,ahead", [(1, 1, 1), (2, 1, 3), (2, 2, 8)])
def test_read_ahead_batches_equal_synchronous_reads(buckets, accum, world, ahead):
    data = open_train_data(buckets)
    data._readers["buckets/4x4"].caches["clip_text"].keep = 1  # a field whose chunks do not fit: read by assemble
    plan = BatchPlan(data.groups, 8, seed=5, window=2)  # block shuffle over windows of 2 chunks
    updates = 3 * plan.batches_per_epoch  # three epochs
    for rank in range(world):
        sync = [data.read(g, idx) for g, idx in _keys(plan, updates, accum * world, rank, world)]
        with ReadAhead(data, _keys(plan, updates, accum * world, rank, world), ReadAheadSettings(ahead, 1)) as ra:
            got = [ra.read(g, idx) for g, idx in _keys(plan, updates, accum * world, rank, world)]
            assert len(_read_ahead_threads()) == 2
        assert len(got) == len(sync) == updates * accum
        for a, b in zip(got, sync):
            assert a.keys() == b.keys()
            for k in a:
                assert (a[k] == b[k]) if k == "captions" else torch.equal(a[k], b[k]), k
        assert not _read_ahead_threads()


def test_read_ahead_refuses_a_batch_out_of_plan_order(buckets):
    data = open_train_data(buckets)
    plan = BatchPlan(data.groups, 8, seed=5)
    with ReadAhead(data, _keys(plan, 2, 1, 0, 1)) as ra:
        g, idx = next(_keys(plan, 2, 1, 0, 1))
        with pytest.raises(RuntimeError, match="out of step"):
            ra.read(g, idx[::-1])


def test_damaged_chunk_is_raised_at_the_batch_that_reads_it(tmp_path):
    store = tiny_store(tmp_path / "s.zarr", n=16)  # chunks of 4 rows
    flip_byte(chunk_file(store, "latents", 2))  # rows 8..11
    data = open_train_data(store)
    plan = BatchPlan(data.groups, 4, seed=0, shuffle=False)  # batch k = rows 4k..4k+3
    with pytest.raises(InputError) as sync:
        data.read("root", [8, 9, 10, 11])
    with ReadAhead(data, _keys(plan, 4, 1, 0, 1), ReadAheadSettings(ahead=4)) as ra:
        assert torch.equal(ra.read("root", [0, 1, 2, 3])["latents"], data.read("root", [0, 1, 2, 3])["latents"])
        ra.read("root", [4, 5, 6, 7])
        with pytest.raises(InputError) as ahead:
            ra.read("root", [8, 9, 10, 11])
    assert str(ahead.value) == str(sync.value) and "chunk 2 (rows 8..11) is damaged" in str(sync.value)
    assert not _read_ahead_threads()

    cfg = toy_cfg(batch_size=4, grad_accum_steps=1, steps=4, save_every=100, ema_decay=None)
    loop = TrainingLoop(ToyTask(cfg), open_train_data(store), cfg, tmp_path / "run", device="cpu", **QUIET)
    loop.plan = plan
    try:
        with pytest.raises(InputError, match=r"chunk 2 \(rows 8..11\) is damaged"):
            loop.run()
    finally:
        loop.close()
    assert loop.step == 2 and not _read_ahead_threads()  # updates 1 and 2 trained; update 3 needed the chunk


class _Interrupted(ToyTask):
    """Raises KeyboardInterrupt in update ``at`` (after recording whether the read-ahead threads were running)."""

    at = 2
    seen: list[int] = []

    def inputs(self, batch, draws, device):
        self.seen.append(len(_read_ahead_threads()))
        if len(self.seen) == self.at:
            raise KeyboardInterrupt
        return super().inputs(batch, draws, device)


def _interrupted_run(cfg, data, run_dir) -> list[int]:
    """The read-ahead thread counts an :class:`_Interrupted` run saw, one per micro-batch, up to its KeyboardInterrupt."""
    _Interrupted.seen = []
    loop = TrainingLoop(_Interrupted(cfg), data, cfg, run_dir, device="cpu", **QUIET)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run()
    finally:
        loop.close()
    return _Interrupted.seen


def _assert_read_ahead_trains_the_same(make_loop) -> None:
    """``make_loop(name)`` -> a new TrainingLoop in its own run folder; run once with the read-ahead and once without:
    the same losses and weights, and no read-ahead thread left."""
    runs = []
    for name, settings in (("ahead", ReadAheadSettings()), ("sync", None)):
        loop = make_loop(name)
        loop.read_ahead = settings
        try:
            runs.append((loop, loop.run()))
        finally:
            loop.close()
    (la, a), (lb, b) = runs
    assert not _read_ahead_threads()
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    for (n, p), (_, q) in zip(la.model.named_parameters(), lb.model.named_parameters()):
        assert torch.equal(p, q), n


def test_training_equals_synchronous_and_leaves_no_thread(tmp_path):
    data = open_train_data(tiny_store(tmp_path / "s.zarr", n=12))
    cfg = toy_cfg(steps=4, save_every=100)  # batch 4, grad accumulation 2, shuffled, 4 epochs of 3 updates
    _assert_read_ahead_trains_the_same(
        lambda name: TrainingLoop(ToyTask(cfg), data, cfg, tmp_path / name, device="cpu", **QUIET))
    assert _interrupted_run(cfg, data, tmp_path / "stopped") == [2, 2] and not _read_ahead_threads()


def test_in_memory_data_is_read_on_the_training_thread(tmp_path):
    cfg = toy_cfg(steps=1, save_every=100)
    lat = structured_latents(8)
    data = TensorData(lat, clip_text_pooled=random_embeddings(8)[1])
    assert _interrupted_run(cfg, data, tmp_path / "mem") == [0, 0]


def test_stage_b_data_reads_ahead_the_same_batches_and_trains_the_same(tmp_path):
    """StageBData (Stage A rows streamed through a bounded cache, stored EfficientNet scales, pooled text) read ahead
    gives the synchronous batches, and a Stage B training run gives the same losses and weights either way."""
    from stage_b_helpers import C_CLIP_TINY, SMALL_B, learnable_stage_a, write_b_store

    from cascadekit.generator.stage_b_data import StageBData
    from cascadekit.generator.tasks.stage_b_config import StageBTrainConfig
    from cascadekit.generator.train_stage_b import stage_b_loop

    n = 24
    sa = learnable_stage_a(n, 8, 8)
    eff = torch.nn.functional.avg_pool2d(sa, 2).repeat(1, 4, 1, 1)  # (n,16,4,4)
    pooled = torch.randn(n, 1, C_CLIP_TINY, generator=torch.Generator().manual_seed(2))
    store = write_b_store(tmp_path / "b.zarr", sa, eff, scales={0.5: eff[..., ::2, ::2].contiguous(), 1.0: eff},
                          pooled=pooled, chunk_rows=2)
    data = StageBData(store)
    plan = BatchPlan(data.groups, 4, seed=3)
    updates = 2 * plan.batches_per_epoch
    sync = [data.read(g, idx) for g, idx in _keys(plan, updates, 1, 0, 1)]
    with ReadAhead(data, _keys(plan, updates, 1, 0, 1), ReadAheadSettings(ahead=4)) as ra:
        got = [ra.read(g, idx) for g, idx in _keys(plan, updates, 1, 0, 1)]
    assert len(got) == updates and {"stage_a", "effnet", "effnet_scales", "clip_text_pooled"} <= set(got[0])
    for a, b in zip(got, sync):
        assert a.keys() == b.keys() and all((a[k] == b[k]) if k == "captions" else torch.equal(a[k], b[k]) for k in a)

    cfg = StageBTrainConfig.from_dict({"preset": "tiny", "batch_size": 4, "steps": 3, "save_every": 100,
                                       "log_every": 1})
    _assert_read_ahead_trains_the_same(
        lambda name: stage_b_loop(store, cfg, tmp_path / name, empty_pooled=torch.zeros(1, 1, C_CLIP_TINY),
                                  model_overrides=SMALL_B, log=lambda m: None))
