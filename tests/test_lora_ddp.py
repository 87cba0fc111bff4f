"""New-token LoRA under DDP (CPU, gloo): 2 processes x 2 accumulated micro-batches give the one-process result,
including micro-batches without any trained token (their token deltas get a zero gradient on every rank)."""
from __future__ import annotations

import os
import warnings

import torch
from _tiny_weights import tiny_weights_dir
from generator_helpers import assert_same_training_log
from ranks import run_ranks
from safetensors.torch import load_file

from cascadekit.codec.text import TextEncoder
from cascadekit.generator.checkpoint import latest_checkpoint
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.data import TensorData
from cascadekit.generator.train import train

CAPTIONS = ["a photo of [fernando]", "a cat on a table", "a red car at night", "[fernando] in the snow"] * 2
CFG = dict(model="tiny", batch_size=4, grad_accum_steps=1, steps=3, lr=1e-2, warmup_steps=1, save_every=3,
           log_every=1, caption_dropout=0.25, lora_rank=2, train_tokens=[["[fernando]", "^dog"]])
OVERRIDES = {"dropout": [0.0, 0.0]}  # dropout masks depend on the per-process batch shape


def _run(weights, data, out, cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(data, TrainConfig.from_dict(cfg), out, init=weights / "stage_c_lite.safetensors", device="cpu",
                     text_encoder=TextEncoder.from_pretrained(weights), model_overrides=OVERRIDES, log=lambda m: None)


def _worker(rank: int, world: int, port: int, weights, data, out: str, cfg: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    _run(weights, data, out, cfg)


def test_ddp_two_processes_match_single_process(tmp_path_factory, tmp_path):
    weights = tiny_weights_dir(tmp_path_factory)
    text = TextEncoder.from_pretrained(weights)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(len(CAPTIONS), 16, 4, 4, generator=g)
    t, p = text.encode(CAPTIONS)
    data = TensorData(lat, CAPTIONS, clip_text=t, clip_text_pooled=p)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _run(weights, data, tmp_path / "single", CFG)
    finally:
        torch.set_num_threads(n)
    ddp_cfg = {**CFG, "grad_accum_steps": 2}  # micro-batches of one sample: some without [fernando]
    run_ranks(_worker, 2, (weights, data, str(tmp_path / "ddp"), ddp_cfg))
    a = load_file(str(single.last_checkpoint / "lora.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "ddp") / "lora.safetensors"))
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-4, atol=2e-5, msg=k)
    assert bool(a["embeddings.embeddings"].abs().max() > 0)
    assert_same_training_log(tmp_path / "single", tmp_path / "ddp")
