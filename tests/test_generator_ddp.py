"""torchrun-style DDP on CPU (gloo): 2 processes (with 2 accumulated micro-batches each) give the
single-process full-batch result (within float tolerance)."""
from __future__ import annotations

import torch
from generator_helpers import FixedEmpty, assert_same_training_log, ddp_worker, tiny_store
from ranks import run_ranks

from cascadekit.generator.checkpoint import latest_checkpoint, load_checkpoint
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.train import train


def _in_memory(store):
    from cascadekit.generator.data import TensorData, open_store

    src = open_store(store)
    g = src.groups[0]
    b = src.read(g.name, list(range(g.size)))
    return TensorData(b["latents"], b["captions"], clip_text=b["clip_text"], clip_text_pooled=b["clip_text_pooled"])


def test_ddp_two_processes_match_single_process(tmp_path):
    store = tiny_store(tmp_path / "s.zarr", n=8)
    cfg = dict(model="tiny", batch_size=4, grad_accum_steps=1, steps=3, lr=1e-3, warmup_steps=1, save_every=3,
               log_every=1, caption_dropout=0.5, loss_weighting="adaptive")
    overrides = {"dropout": [0.0, 0.0]}  # dropout masks depend on the per-process batch shape
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(store, TrainConfig.from_dict(cfg), tmp_path / "single", device="cpu", text_encoder=FixedEmpty(),
                       model_overrides=overrides, log=lambda m: None)
    finally:
        torch.set_num_threads(n)
    # the children (from the preloaded forkserver, see ranks.py) get the store's contents in memory, read
    # through the same planner
    data = _in_memory(store)
    # the 2 processes also accumulate 2 micro-batches (no_sync path): still the one-process full-batch result
    ddp_cfg = {**cfg, "grad_accum_steps": 2}
    run_ranks(ddp_worker, 2, (data, str(tmp_path / "ddp"), ddp_cfg, overrides))
    a = load_checkpoint(single.last_checkpoint)
    b = load_checkpoint(latest_checkpoint(tmp_path / "ddp"))
    assert b["meta"]["step"] == 3
    for k, v in a["weights"].items():
        torch.testing.assert_close(b["weights"][k], v, rtol=1e-4, atol=2e-5, msg=k)
    # the adaptive loss buckets saw the same global batches
    torch.testing.assert_close(b["state"]["gdf"]["adaptive.bucket_losses"], a["state"]["gdf"]["adaptive.bucket_losses"])
    # and training really moved the weights (the comparison is not between two untouched inits)
    assert_same_training_log(tmp_path / "single", tmp_path / "ddp")
