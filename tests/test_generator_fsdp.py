"""torchrun-style FSDP on CPU (gloo): 2 processes, FULL_SHARD with one unit per block, give the
single-process full-batch result; the gathered checkpoint has the official Stage C keys; a run resumed
under FSDP continues exactly, and an FSDP checkpoint resumes in one process (optimizer state re-keyed)."""
from __future__ import annotations

import json

import torch
import torch.multiprocessing as mp
from generator_helpers import FixedEmpty, tiny_store
from test_generator_ddp import _free_port, _in_memory

from cascadekit.generator.checkpoint import LATEST, latest_checkpoint, load_checkpoint
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.train import Trainer, train

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

    from cascadekit.generator import distributed as dist_util

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
    mp.start_processes(_fsdp_worker, args=(2, _free_port(), data, str(out), cfg, runs, report), nprocs=2, join=True,
                       start_method="fork")


def test_fsdp_two_processes_match_single_process_and_resume(tmp_path):
    from cascadekit.codec.weights.assign import load_into
    from cascadekit.generator.stage_c import StageC
    from cascadekit.generator.train import stage_c_config

    store = tiny_store(tmp_path / "s.zarr", n=8)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(store, TrainConfig.from_dict({**CFG, "grad_accum_steps": 1}), tmp_path / "single", device="cpu",
                       text_encoder=FixedEmpty(), model_overrides=OVERRIDES, log=lambda m: None)
    finally:
        torch.set_num_threads(n)
    data = _in_memory(store)  # fork-safe in-memory copy (see the DDP test)
    fsdp_cfg = {**CFG, "fsdp": True, "gradient_checkpointing": True}  # the big preset's combination
    report = mp.get_context("fork").SimpleQueue()
    _spawn(data, tmp_path / "fsdp", fsdp_cfg, [(False, None)], report)

    # FSDP really wrapped every block in its own unit (+ the root) and each rank holds half the parameters
    got = sorted(report.get() for _ in range(2))
    a = load_checkpoint(single.last_checkpoint)
    total = sum(v.numel() for v in a["weights"].values())
    for rank, units, blocks, local in got:
        assert blocks > 0 and units == blocks + 1
        assert abs(local - total / 2) <= blocks + 1, (local, total)
    assert sum(g[3] for g in got) == total

    b = load_checkpoint(latest_checkpoint(tmp_path / "fsdp"))
    assert b["meta"]["step"] == 3
    assert list(b["weights"]) == list(a["weights"])  # official names, official order (no FSDP prefixes)
    for k, v in a["weights"].items():
        torch.testing.assert_close(b["weights"][k], v, rtol=1e-4, atol=2e-5, msg=k)
    torch.testing.assert_close(b["state"]["gdf"]["adaptive.bucket_losses"], a["state"]["gdf"]["adaptive.bucket_losses"])
    la = [json.loads(x) for x in (tmp_path / "single" / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "fsdp" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [1, 2, 3]
    for ra, rb in zip(la, lb):
        assert abs(ra["loss"] - rb["loss"]) < 1e-5 and abs(ra["grad_norm"] - rb["grad_norm"]) < 1e-4 * ra["grad_norm"]
        assert ra["grad_norm"] > 0
    # the full optimizer state was gathered: every parameter by name, unsharded, the moments of the
    # one-process run (numbered in named_parameters order), exp_avg and exp_avg_sq distinct tensors
    opt, ref = b["state"]["optimizer"], a["state"]["optimizer"]
    model = StageC.from_config(stage_c_config(TrainConfig.from_dict(CFG), OVERRIDES))
    order = [k for k, _ in model.named_parameters()]
    assert sorted(opt["state"]) == sorted(order) and opt["param_groups"][0]["params"] and len(ref["state"]) == len(order)
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

    # resume under FSDP: 2 updates, "killed", 1 more update after --resume == the uninterrupted run
    resume_cfg = {**fsdp_cfg, "save_every": 1}
    _spawn(data, tmp_path / "resumed", resume_cfg, [(False, 2), (True, None)])
    c = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))
    assert c["meta"]["step"] == 3
    for k, v in b["weights"].items():
        torch.testing.assert_close(c["weights"][k], v, rtol=1e-6, atol=1e-7, msg=k)

    # an FSDP checkpoint (optimizer state keyed by name) resumes in one process (numbered optimizer state)
    one = tmp_path / "one"
    one.mkdir()
    import shutil

    shutil.copytree(tmp_path / "resumed" / "checkpoints", one / "checkpoints")
    shutil.copy(tmp_path / "resumed" / "run.json", one / "run.json")
    steps = sorted((one / "checkpoints").glob("step_*"))
    assert len(steps) == 2
    shutil.rmtree(steps[1])  # as if killed after update 2: latest -> step 2
    (one / "checkpoints" / LATEST).write_text(steps[0].name + "\n")
    assert load_checkpoint(latest_checkpoint(one))["meta"]["step"] == 2
    torch.set_num_threads(1)
    try:
        r = train(data, TrainConfig.from_dict(resume_cfg), one, resume=True, device="cpu", text_encoder=FixedEmpty(),
                  model_overrides=OVERRIDES, log=lambda m: None)
    finally:
        torch.set_num_threads(n)
    assert r.step == 3 and r.history[0]["step"] == 3
    d = load_checkpoint(r.last_checkpoint)
    for k, v in a["weights"].items():
        torch.testing.assert_close(d["weights"][k], v, rtol=1e-4, atol=2e-5, msg=k)
