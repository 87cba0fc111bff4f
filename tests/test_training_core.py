"""The training core drives any task: a toy task defined here (its own network, config fields, conditioning,
checkpoint file, frozen part) trains on the tiny store and resumes bit-exactly, without any core change.
Plus the resume rule read from config field metadata (a new field is fixed unless marked changeable)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from generator_helpers import tiny_store
from safetensors.torch import load_file
from torch import nn

from cascadekit.codec.errors import InputError
from cascadekit.generator.checkpoint import latest_checkpoint, load_checkpoint
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.data import open_store
from cascadekit.generator.training.loop import TrainingLoop, init_seed
from cascadekit.generator.training.settings import CoreConfig, changeable, fixed_on_resume, resume_changes
from cascadekit.generator.training.task import TrainTask

QUIET = dict(log=lambda m: None)


@dataclass
class ToyConfig(CoreConfig):
    """A task's own config: two fields of its own next to the core's."""

    hidden: int = 16                      # fixed on resume (no metadata: safe by default)
    pooled_dropout: float = 0.25          # fixed on resume
    note: str = changeable("")            # may change on resume


class ToyNet(nn.Module):
    """x_t (B,16,h,w), r (B,), pooled (B,1,32) -> eps (B,16,h,w); ``frozen`` is a fixed text projection."""

    def __init__(self, hidden: int):
        super().__init__()
        self.frozen = nn.Linear(32, hidden)
        self.frozen.requires_grad_(False)
        self.inp = nn.Conv2d(16, hidden, 3, padding=1)
        self.r_proj = nn.Linear(1, hidden)
        self.out = nn.Conv2d(hidden, 16, 3, padding=1)
        self.gradient_checkpointing = False   # the core sets this flag

    def forward(self, x, r, pooled):
        h = self.inp(x) + self.r_proj(r[:, None])[:, :, None, None] + self.frozen(pooled[:, 0])[:, :, None, None]
        return self.out(torch.nn.functional.gelu(h))


class ToyTask(TrainTask):
    """Trainable conv layers, a frozen projection, pooled-text dropout to zeros, its own checkpoint file."""

    title = "toy"
    weights_name = "toy.safetensors"
    fsdp_units = (nn.Conv2d,)

    def __init__(self, cfg: ToyConfig):
        self.cfg = cfg

    def check(self, data):
        return [] if "clip_text_pooled" in data.fields else ["the toy needs clip_text_pooled"]

    def build(self, data, resume_from, recorded):
        torch.manual_seed(init_seed(self.cfg))
        net = ToyNet(self.cfg.hidden)
        if resume_from is not None:  # the checkpoint holds only the trained tensors
            net.load_state_dict(load_file(str(resume_from / self.weights_name)), strict=False)
        self.trained = [n for n, _ in self.trainable(net)]  # names before any DDP/FSDP wrapping
        return net

    def draws(self, generator, n, group):
        return {"noise": torch.randn((n, *group.shape), generator=generator),
                "drop": torch.rand(n, generator=generator) < self.cfg.pooled_dropout}

    def inputs(self, batch, draws, device):
        pooled = batch["clip_text_pooled"].to(device, torch.float32).reshape(len(draws["drop"]), 1, -1)
        pooled = torch.where(draws["drop"].to(device)[:, None, None], torch.zeros_like(pooled), pooled)
        return batch["latents"].to(device, torch.float32), {"pooled": pooled}

    def checkpoint_weights(self, module, full_state):
        full = full_state()  # collective under FSDP; rank 0 gets the tensors
        return {k: full[k] for k in self.trained if k in full}, {"format": "toy", "hidden": str(self.cfg.hidden)}

    def record(self):
        return {"toy": {"hidden": self.cfg.hidden}}


def toy_cfg(**kw) -> ToyConfig:
    base = dict(batch_size=4, grad_accum_steps=2, steps=6, lr=5e-3, warmup_steps=1, log_every=1, save_every=3,
                keep_checkpoints=3, ema_decay=0.8, loss_weighting="adaptive", seed=3)
    return ToyConfig.from_dict({**base, **kw})


def run_toy(data, cfg: ToyConfig, out: Path, resume: bool = False, stop_after: int | None = None):
    loop = TrainingLoop(ToyTask(cfg), data, cfg, out, resume=resume, device="cpu", **QUIET)
    try:
        return loop, loop.run(stop_after=stop_after)
    finally:
        loop.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return open_store(tiny_store(tmp_path_factory.mktemp("toy") / "s.zarr", n=8))


def test_toy_task_trains_and_resumes_bit_exactly(tmp_path, data):
    loop, straight = run_toy(data, toy_cfg(), tmp_path / "a")
    losses = [h["loss"] for h in straight.history]
    assert straight.step == 6 and losses[-1] < losses[0]
    # only the trainable tensors are in the checkpoint; the frozen projection did not move
    ck = load_checkpoint(straight.last_checkpoint)
    assert ck["weights_name"] == "toy.safetensors" and not any(k.startswith("frozen.") for k in ck["weights"])
    torch.manual_seed(init_seed(toy_cfg()))
    fresh = ToyNet(16)
    assert torch.equal(loop.model.frozen.weight, fresh.frozen.weight)
    assert not torch.equal(ck["weights"]["inp.weight"], fresh.inp.weight)
    assert set(ck["ema"]) == set(ck["weights"])
    assert json.loads((tmp_path / "a" / "run.json").read_text())["toy"] == {"hidden": 16}

    _, first = run_toy(data, toy_cfg(), tmp_path / "b", stop_after=4)  # "killed" after step 4 (last save: 3)
    assert first.step == 4 and latest_checkpoint(tmp_path / "b").name == "step_000003"
    torch.manual_seed(999)
    _, second = run_toy(data, toy_cfg(note="resumed"), tmp_path / "b", resume=True)  # a changeable field
    b = load_checkpoint(second.last_checkpoint)
    for k in ck["weights"]:
        assert torch.equal(ck["weights"][k], b["weights"][k]), k
        assert torch.equal(ck["ema"][k], b["ema"][k]), k
    assert [h["loss"] for h in straight.history[3:]] == [h["loss"] for h in second.history]
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_toy_task_config_fields_are_fixed_on_resume(tmp_path, data):
    run_toy(data, toy_cfg(steps=1, save_every=1), tmp_path / "r")
    for change, name in ((dict(hidden=8), "hidden"), (dict(pooled_dropout=0.5), "pooled_dropout"), (dict(lr=1e-3), "lr")):
        with pytest.raises(InputError, match=f"{name}: "):
            run_toy(data, toy_cfg(steps=2, **change), tmp_path / "r", resume=True)
    _, res = run_toy(data, toy_cfg(steps=2, save_every=2, log_every=5, note="x"), tmp_path / "r", resume=True)
    assert res.step == 2


def test_toy_task_check_runs_before_anything_is_written(tmp_path):
    from cascadekit.generator.data import TensorData

    with pytest.raises(InputError, match="the toy needs clip_text_pooled"):
        run_toy(TensorData(torch.zeros(8, 16, 4, 4), ["a"] * 8), toy_cfg(), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_fixed_on_resume_comes_from_field_metadata():
    changeable_c = set(f.name for f in dataclasses.fields(TrainConfig)) - set(fixed_on_resume(TrainConfig))
    assert changeable_c == {"steps", "gradient_checkpointing", "fsdp", "log_every", "tensorboard", "preview_every",
                            "preview_steps", "preview_count", "save_every", "keep_checkpoints"}

    @dataclass
    class Later(TrainConfig):
        new_knob: float = 0.5             # a field added later, without metadata

    assert "new_knob" in fixed_on_resume(Later)
    old = Later().to_dict()
    assert resume_changes(old, Later(new_knob=0.7)) == ["new_knob: 0.5 -> 0.7"]
    assert resume_changes(old, Later(steps=5, save_every=7)) == []
    before = {k: v for k, v in old.items() if k != "new_knob"}  # run.json of a run made before the field existed
    assert resume_changes(before, Later()) == []  # = its default: old runs still resume
    assert resume_changes(before, Later(new_knob=0.7)) == ["new_knob: 0.5 -> 0.7"]


def _toy_worker(rank: int, world: int, port: int, data, out: str, cfg: dict) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    run_toy(data, ToyConfig.from_dict(cfg), Path(out))


@pytest.mark.parametrize("fsdp", [False, True])
def test_toy_task_under_ddp_and_fsdp_matches_one_process(tmp_path, data, fsdp):
    """The core's DDP / FSDP path (FSDP units from the task's ``fsdp_units``) is not Stage C specific."""
    from generator_helpers import assert_same_training_log
    from ranks import run_ranks
    from test_generator_ddp import _in_memory

    mem = _in_memory(data.path)
    plain = dict(batch_size=4, grad_accum_steps=1, steps=3, lr=5e-3, warmup_steps=1, log_every=1, save_every=3,
                 loss_weighting="adaptive", seed=3)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, single = run_toy(mem, ToyConfig.from_dict(plain), tmp_path / "single")
    finally:
        torch.set_num_threads(n)
    multi = {**plain, "grad_accum_steps": 2, "fsdp": fsdp}
    run_ranks(_toy_worker, 2, (mem, str(tmp_path / "multi"), multi))
    a = load_checkpoint(single.last_checkpoint)["weights"]
    b = load_checkpoint(latest_checkpoint(tmp_path / "multi"))["weights"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2e-5, msg=k)
    assert_same_training_log(tmp_path / "single", tmp_path / "multi")
