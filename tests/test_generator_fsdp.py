"""torchrun-style FSDP on CPU (gloo): 2 processes, FULL_SHARD with one unit per block, give the
single-process full-batch result; the gathered checkpoint (official Stage C keys, full optimizer state by
parameter name) loads into StageC; a run resumed under FSDP continues exactly, and checkpoints move between
FSDP and one process in both directions (optimizer state re-keyed)."""
from __future__ import annotations

import shutil

import torch
import pytest
from generator_helpers import FixedEmpty, assert_same_training_log, tiny_store
from ranks import context, run_ranks
from test_generator_ddp import _in_memory

from cascadekit.generator.checkpoint import LATEST, latest_checkpoint, load_checkpoint
from cascadekit.generator.config import TrainConfig
from cascadekit.codec.weights.assign import load_into
from cascadekit.generator.stage_c import StageC
from cascadekit.generator.train import Trainer, stage_c_config, train

CFG = dict(model="tiny", batch_size=4, grad_accum_steps=2, steps=3, lr=1e-3, warmup_steps=1, save_every=3,
           log_every=1, caption_dropout=0.5, loss_weighting="adaptive")
OVERRIDES = {"dropout": [0.0, 0.0]}  # dropout masks depend on the per-process batch shape


def _fsdp_worker(rank: int, world: int, port: int, data, out: str, cfg: dict, runs: list, report) -> None:
    """One process: the training calls ``runs`` ([(resume, stop_after), ...]) in one process group."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from cascadekit.generator.training import parallel as dist_util

    dist.init_process_group("gloo")
    try:
        for resume, stop_after in runs:
            t = Trainer(data, TrainConfig.from_dict(cfg), out, resume=resume, device="cpu", text_encoder=FixedEmpty(),
                        model_overrides=OVERRIDES, log=lambda m: None)
            assert dist_util.is_fsdp(t.wrapped)
            if report is not None and not resume:  # FULL_SHARD, one FSDP unit per block, this rank's share
                from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

                from cascadekit.codec.models.blocks import AttnBlock, ResBlock, TimestepBlock

                units = sum(isinstance(m, FSDP) for m in t.wrapped.modules())
                blocks = sum(isinstance(m, (ResBlock, AttnBlock, TimestepBlock)) for m in t.wrapped.modules())
                report.put((rank, units, blocks, sum(p.numel() for p in t.wrapped.parameters())))
            t.run(stop_after=stop_after)
    finally:
        dist.destroy_process_group()


def _spawn(data, out, cfg, runs, report=None):
    run_ranks(_fsdp_worker, 2, (data, str(out), cfg, runs, report))


def _one_process(*args, **kwargs):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(*args, device="cpu", text_encoder=FixedEmpty(), model_overrides=OVERRIDES, log=lambda m: None,
                     **kwargs)
    finally:
        torch.set_num_threads(n)


def _assert_same_weights(x: dict, y: dict, rtol: float = 1e-4, atol: float = 2e-5) -> None:
    assert list(x) == list(y)
    for k, v in y.items():
        torch.testing.assert_close(x[k], v, rtol=rtol, atol=atol, msg=k)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process without FSDP (1 micro-batch of 4) and 2 FSDP processes (2 micro-batches of 1 each):
    3 updates each, with the big preset's gradient checkpointing under FSDP."""
    tmp = tmp_path_factory.mktemp("fsdp")
    store = tiny_store(tmp / "s.zarr", n=8)
    single = _one_process(store, TrainConfig.from_dict({**CFG, "grad_accum_steps": 1}), tmp / "single")
    data = _in_memory(store)  # in-memory copy (see the DDP test)
    fsdp_cfg = {**CFG, "fsdp": True, "gradient_checkpointing": True}
    report = context().SimpleQueue()
    _spawn(data, tmp / "fsdp", fsdp_cfg, [(False, None)], report)
    return dict(tmp=tmp, data=data, cfg=fsdp_cfg, report=sorted(report.get() for _ in range(2)),
                a=load_checkpoint(single.last_checkpoint), b=load_checkpoint(latest_checkpoint(tmp / "fsdp")))


def _stage_c() -> StageC:
    return StageC.from_config(stage_c_config(TrainConfig.from_dict(CFG), OVERRIDES))


def test_fsdp_two_processes_match_single_process(runs):
    a, b, tmp = runs["a"], runs["b"], runs["tmp"]
    # FSDP really wrapped every block in its own unit (+ the root) and each rank holds half the parameters
    total = sum(v.numel() for v in a["weights"].values())
    for rank, units, blocks, local in runs["report"]:
        assert blocks > 0 and units == blocks + 1
        assert abs(local - total / 2) <= blocks + 1, (local, total)
    assert sum(g[3] for g in runs["report"]) == total

    assert b["meta"]["step"] == 3
    _assert_same_weights(b["weights"], a["weights"])  # official names (no FSDP prefixes), same values
    torch.testing.assert_close(b["state"]["gdf"]["adaptive.bucket_losses"], a["state"]["gdf"]["adaptive.bucket_losses"])
    assert_same_training_log(tmp / "single", tmp / "fsdp")  # and training moved the weights


def test_fsdp_checkpoint_has_full_optimizer_state_and_official_weights(runs):
    a, b = runs["a"], runs["b"]
    # the full optimizer state was gathered: every parameter by name, unsharded, the moments of the
    # one-process run (numbered in named_parameters order), exp_avg and exp_avg_sq distinct tensors
    opt, ref = b["state"]["optimizer"], a["state"]["optimizer"]
    model = _stage_c()
    order = [k for k, _ in model.named_parameters()]
    assert sorted(opt["state"]) == sorted(order) and len(ref["state"]) == len(order)
    assert sorted(opt["param_groups"][0]["params"]) == sorted(order)
    for i, k in enumerate(order):
        st = opt["state"][k]
        assert st["exp_avg"].shape == a["weights"][k].shape, k
        assert st["exp_avg"].untyped_storage().data_ptr() != st["exp_avg_sq"].untyped_storage().data_ptr(), k
        assert float(st["step"]) == 3
        for m in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(st[m], ref["state"][i][m], rtol=1e-3, atol=1e-6, msg=f"{k} {m}")
    # the saved model.safetensors loads into StageC through the project loader
    load_into(model, b["weights"])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, b["weights"][k], rtol=0, atol=0)


def test_fsdp_resume_and_switching_to_and_from_one_process(runs):
    tmp, data, b = runs["tmp"], runs["data"], runs["b"]
    cfg = {**runs["cfg"], "save_every": 1}
    # under FSDP: 2 updates, "killed", 1 more update after --resume == the uninterrupted run
    _spawn(data, tmp / "resumed", cfg, [(False, 2), (True, None)])
    c = load_checkpoint(latest_checkpoint(tmp / "resumed"))
    assert c["meta"]["step"] == 3
    _assert_same_weights(c["weights"], b["weights"], rtol=1e-6, atol=1e-7)

    # an FSDP checkpoint (optimizer state by name) resumes in one process (numbered optimizer state)
    one = tmp / "one"
    one.mkdir()
    shutil.copytree(tmp / "resumed" / "checkpoints", one / "checkpoints")
    shutil.copy(tmp / "resumed" / "run.json", one / "run.json")
    steps = sorted((one / "checkpoints").glob("step_*"))
    assert len(steps) == 2
    shutil.rmtree(steps[1])  # as if killed after update 2: latest -> step 2
    (one / "checkpoints" / LATEST).write_text(steps[0].name + "\n")
    assert load_checkpoint(latest_checkpoint(one))["meta"]["step"] == 2
    r = _one_process(data, TrainConfig.from_dict(cfg), one, resume=True)
    assert r.step == 3 and [h["step"] for h in r.history] == [3]
    _assert_same_weights(load_checkpoint(r.last_checkpoint)["weights"], b["weights"])

    # and the other way round: 2 updates in one process (numbered optimizer state), resumed under FSDP
    _one_process(data, TrainConfig.from_dict(cfg), tmp / "mixed", stop_after=2)
    assert load_checkpoint(latest_checkpoint(tmp / "mixed"))["meta"]["step"] == 2
    _spawn(data, tmp / "mixed", cfg, [(True, None)])
    e = load_checkpoint(latest_checkpoint(tmp / "mixed"))
    assert e["meta"]["step"] == 3
    _assert_same_weights(e["weights"], b["weights"])
