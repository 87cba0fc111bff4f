"""2-process FSDP (gloo, CPU) ControlNet training gives the single-process ControlNet weights.

FSDP shards the frozen Stage C block by block and puts the (trained) ControlNet in its own unit; only the
ControlNet's parameters reach the optimizer; the checkpoint's ``controlnet.safetensors`` is the gathered full state
dict in the official key layout (the large bottleneck of sr, and the effnet one of canny with its BatchNorm
buffers, checked against the released file's manifest); a run stopped and resumed under FSDP continues exactly.
"""
from __future__ import annotations

import dataclasses

import torch
from controlnet_train_helpers import block_images, config, make_store, stage_c_file
from generator_helpers import FixedEmpty, assert_same_training_log
from conftest import load_manifest
from ranks import context, run_ranks
from safetensors.torch import load_file

from cascadekit.generator.checkpoint import latest_checkpoint
from cascadekit.generator.train_controlnet import train_controlnet


def _units(loop) -> dict:
    """What FSDP wrapped in this rank: unit counts by wrapped type, and this rank's trainable / frozen numbers."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from cascadekit.generator.training import parallel

    kinds: dict[str, int] = {}
    for m in loop.wrapped.modules():
        if isinstance(m, FSDP) and m is not loop.wrapped:
            name = type(m.module).__name__
            kinds[name] = kinds.get(name, 0) + 1
    params = list(loop.wrapped.parameters())
    opt = [p for g in loop.optimizer.param_groups for p in g["params"]]
    return {"fsdp": parallel.is_fsdp(loop.wrapped), "kinds": kinds,
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "frozen": sum(p.numel() for p in params if not p.requires_grad),
            "optimized": sum(p.numel() for p in opt), "optimizer_all_trainable": all(p.requires_grad for p in opt)}


def _fsdp_worker(rank: int, world: int, port: int, store: str, out: str, cfg: dict, init: str, report,
                 runs=((False, 2), (True, None))) -> None:
    """One process: the training calls ``runs`` ([(resume, stop_after), ...], default: 2 updates, stopped, then
    resumed to the end) in one process group; what FSDP wrapped goes to ``report``."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from cascadekit.generator.tasks.controlnet_config import ControlNetTrainConfig
    from cascadekit.generator.train_controlnet import controlnet_loop

    dist.init_process_group("gloo")
    try:
        for resume, stop_after in runs:
            loop = controlnet_loop(store, ControlNetTrainConfig.from_dict(cfg), out, init=init, resume=resume,
                                   device="cpu", text_encoder=FixedEmpty(), log=lambda m: None)
            if not resume:
                report.put((rank, _units(loop)))
            try:
                loop.run(stop_after=stop_after)
            finally:
                loop.close()
    finally:
        dist.destroy_process_group()


def test_fsdp_two_processes_match_single_process(tmp_path):
    store = make_store(tmp_path / "s.zarr", block_images(tmp_path / "img", n=8), controls=("sr",))
    init = stage_c_file(tmp_path / "w")
    # the large bottleneck (the 203M-parameter super-resolution ControlNet's, at test widths) with offset noise
    cfg = config("sr", batch_size=4, steps=3, save_every=2, caption_dropout=0.5, controlnet_blocks=[0, 7])
    single = train_controlnet(store, cfg, tmp_path / "single", init=init, device="cpu", text_encoder=FixedEmpty(),
                              log=lambda m: None)
    fsdp_cfg = {**dataclasses.asdict(cfg), "grad_accum_steps": 2, "fsdp": True, "gradient_checkpointing": True}
    fsdp_cfg["adam_betas"] = list(fsdp_cfg["adam_betas"])
    report = context().SimpleQueue()
    run_ranks(_fsdp_worker, 2, (str(store), str(tmp_path / "fsdp"), fsdp_cfg, str(init), report))
    units = dict(report.get() for _ in range(2))

    a = load_file(str(single.last_checkpoint / "controlnet.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "fsdp") / "controlnet.safetensors"))
    assert list(b) == list(a)  # the official keys (no FSDP / "controlnet." prefixes), the same order
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2e-5, msg=k)
    assert_same_training_log(tmp_path / "single", tmp_path / "fsdp")  # and training moved the weights

    n_controlnet = sum(v.numel() for v in a.values())
    for rank, u in units.items():
        assert u["fsdp"], u
        # one unit per Stage C block (ResBlock / AttnBlock / TimestepBlock) and one for the ControlNet
        assert u["kinds"].get("ControlNet") == 1 and u["kinds"].get("ResBlock", 0) > 0, u
        assert set(u["kinds"]) <= {"ControlNet", "ResBlock", "AttnBlock", "TimestepBlock"}, u
        # this rank holds about half of the ControlNet (sharded), only it is optimised, Stage C is frozen
        assert abs(u["trainable"] - n_controlnet / 2) <= 1, (rank, u, n_controlnet)
        assert u["optimized"] == u["trainable"] and u["optimizer_all_trainable"], u
        assert u["frozen"] > 0, u
    assert sum(u["trainable"] for u in units.values()) == n_controlnet

    # the gathered file loads as an official ControlNet (mode, c_in and proj_blocks from the file)
    from cascadekit.codec.weights.controlnet import load_controlnet

    net, info = load_controlnet(latest_checkpoint(tmp_path / "fsdp") / "controlnet.safetensors", "super_resolution")
    assert info.config.proj_blocks == [0, 7] and info.config.bottleneck_mode == "large"
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, b[k], rtol=0, atol=0)


def _as_dict(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    d["adam_betas"] = list(d["adam_betas"])
    return d


def test_fsdp_effnet_controlnet_checkpoint_is_the_official_layout(tmp_path):
    """The canny ControlNet (effnet bottleneck: BatchNorm buffers, frozen statistics) under FSDP: the gathered file
    has the official keys and shapes of ``controlnet/canny.safetensors`` (the projections for this Stage C's slots)
    and the single-process values, buffers included."""
    control = "canny"
    store = make_store(tmp_path / "s.zarr", block_images(tmp_path / "img", n=4), controls=("canny",))
    init = stage_c_file(tmp_path / "w")
    cfg = config(control, batch_size=4, steps=1, save_every=1, bottleneck_mode="effnet", backbone_init="random")
    single = train_controlnet(store, cfg, tmp_path / "single", init=init, device="cpu", text_encoder=FixedEmpty(),
                              log=lambda m: None)
    report = context().SimpleQueue()
    run_ranks(_fsdp_worker, 2, (str(store), str(tmp_path / "fsdp"), {**_as_dict(cfg), "grad_accum_steps": 2,
                                                                      "fsdp": True}, str(init), report,
                                ((False, None),)))
    assert all(u["kinds"].get("ControlNet") == 1 for _, u in (report.get() for _ in range(2)))
    a = load_file(str(single.last_checkpoint / "controlnet.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "fsdp") / "controlnet.safetensors"))
    official = dict((k, v) for k, v in load_manifest(f"controlnet_{control}")["state_dict"])
    backbone = {k: v for k, v in official.items() if k.startswith("backbone.")}
    assert {k: list(v.shape) for k, v in b.items() if k.startswith("backbone.")} == backbone
    assert sorted(k for k in b if not k.startswith("backbone.")) == \
        sorted(k for k in official if k.startswith(("projections.0.", "projections.1.")))
    assert list(b) == list(a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2e-5, msg=k)
    # eval-mode BatchNorm: one update leaves the running statistics where they started (0 / 1: random start)
    assert all(torch.equal(b[k], torch.zeros_like(b[k])) for k in b if k.endswith("running_mean"))
    assert all(torch.equal(b[k], torch.ones_like(b[k])) for k in b if k.endswith("running_var"))
