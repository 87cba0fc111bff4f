"""TrainingLoop(compile=...): the training forward through torch.compile trains like eager (toy task, CPU)."""
from __future__ import annotations

import pytest
from test_training_core import QUIET, ToyTask, run_toy, toy_cfg  # noqa: F401  (the toy task of the core tests)
from test_training_core import data  # noqa: F401  (module fixture)

from cascadekit.codec.compile import CompileSettings, unwrap
from cascadekit.generator.training.loop import TrainingLoop


def test_compiled_training_forward_trains_like_eager(tmp_path, data):  # noqa: F811
    cfg = toy_cfg(steps=3, save_every=3, ema_decay=None)
    _, eager = run_toy(data, cfg, tmp_path / "eager")
    loop = TrainingLoop(ToyTask(cfg), data, cfg, tmp_path / "compiled", device="cpu",
                        compile=CompileSettings(backend="aot_eager"), **QUIET)
    try:
        fast = loop.run()
        assert loop.forward.checked_max_abs_diff is not None and unwrap(loop.forward) is loop.wrapped
    finally:
        loop.close()
    assert fast.step == eager.step == 3
    assert [h["loss"] for h in fast.history] == pytest.approx([h["loss"] for h in eager.history], rel=1e-4, abs=1e-6)
