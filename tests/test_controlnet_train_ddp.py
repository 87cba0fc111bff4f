"""2-process DDP (gloo, CPU) ControlNet training gives the single-process ControlNet weights."""
from __future__ import annotations

import dataclasses
import torch
from controlnet_train_helpers import block_images, config, ddp_worker, make_store, stage_c_file
from generator_helpers import FixedEmpty, assert_same_training_log
from ranks import run_ranks
from safetensors.torch import load_file

from cascadekit.generator.checkpoint import latest_checkpoint
from cascadekit.generator.train_controlnet import train_controlnet


def test_ddp_two_processes_match_single_process(tmp_path):
    store = make_store(tmp_path / "s.zarr", block_images(tmp_path / "img", n=8), controls=("inpaint",))
    init = stage_c_file(tmp_path / "w")
    cfg = config("inpainting", batch_size=4, steps=3, save_every=3, caption_dropout=0.5, offset_noise=0.1)
    single = train_controlnet(store, cfg, tmp_path / "single", init=init, device="cpu", text_encoder=FixedEmpty(),
                              log=lambda m: None)
    ddp_cfg = {**dataclasses.asdict(cfg), "grad_accum_steps": 2}
    ddp_cfg["adam_betas"] = list(ddp_cfg["adam_betas"])
    run_ranks(ddp_worker, 2, (str(store), str(tmp_path / "ddp"), ddp_cfg, str(init)))
    a = load_file(str(single.last_checkpoint / "controlnet.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "ddp") / "controlnet.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2e-5, msg=k)
    assert_same_training_log(tmp_path / "single", tmp_path / "ddp")
