"""Fine-tune Stage B on a latent store with Stage A latents: the training core driving the Stage B task.

``train_stage_b(store, StageBTrainConfig.preset("finetune_b_lite"), "runs/b", init=WEIGHTS)``; what is
trained and how: :mod:`cascadekit.generator.tasks.stage_b`; the core: :mod:`cascadekit.generator.training`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from cascadekit.generator.stage_b_data import StageBData
from cascadekit.generator.tasks.stage_b import StageBTask
from cascadekit.generator.tasks.stage_b_config import StageBTrainConfig
from cascadekit.generator.training.loop import TrainingLoop, TrainResult


def stage_b_loop(data: str | Path | StageBData, cfg: StageBTrainConfig, out: str | Path, *,
                 init: str | Path | None = None, resume: bool = False, device: str | torch.device | None = None,
                 text_encoder: Any = None, empty_pooled: torch.Tensor | None = None,
                 model_overrides: dict[str, Any] | None = None, image_encoder: Any = None,
                 log: Callable[[str], None] = print) -> TrainingLoop:
    """The :class:`TrainingLoop` of a Stage B run (everything checked, nothing trained yet); see :func:`train_stage_b`."""
    source = StageBData(data, pixels=cfg.on_the_fly_effnet) if isinstance(data, (str, Path)) else data
    task = StageBTask(cfg, init=init, text_encoder=text_encoder, empty_pooled=empty_pooled,
                      model_overrides=model_overrides, image_encoder=image_encoder, log=log)
    return TrainingLoop(task, source, cfg, out, resume=resume, device=device, log=log)


def train_stage_b(data: str | Path | StageBData, cfg: StageBTrainConfig, out: str | Path, *,
                  init: str | Path | None = None, resume: bool = False, device: str | torch.device | None = None,
                  text_encoder: Any = None, empty_pooled: torch.Tensor | None = None,
                  model_overrides: dict[str, Any] | None = None, stop_after: int | None = None,
                  image_encoder: Any = None, log: Callable[[str], None] = print) -> TrainResult:
    """Fine-tune Stage B on ``data`` (a store path from ``encode --stage-a`` or a :class:`StageBData`) into ``out``.

    init: Stage B weights (official file or weights folder; its empty-caption cache gives the dropout
    embedding). resume: continue exactly from the newest intact checkpoint. text_encoder: for stores with
    captions but no stored pooled embeddings. empty_pooled: the empty caption's pooled embedding (1,1,c_clip)
    if neither gives it. model_overrides: StageB constructor arguments replacing the preset's.
    image_encoder: the EfficientNet (a ``Codec`` with ``effnet``) for ``cfg.on_the_fly_effnet``.
    Raises InputError before training for a bad config, store or init file.
    """
    loop = stage_b_loop(data, cfg, out, init=init, resume=resume, device=device, text_encoder=text_encoder,
                        empty_pooled=empty_pooled, model_overrides=model_overrides, image_encoder=image_encoder,
                        log=log)
    try:
        return loop.run(stop_after=stop_after)
    finally:
        loop.close()
