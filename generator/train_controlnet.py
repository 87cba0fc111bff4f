"""Train a ControlNet for a frozen Stage C on a latent store: the training core driving the ControlNet task.

``train_controlnet(store, ControlNetTrainConfig.preset("controlnet_canny"), "runs/cn", init=WEIGHTS)``; what is
trained and how: :mod:`cascadekit.generator.tasks.controlnet`; the core: :mod:`cascadekit.generator.training`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from cascadekit.generator.data import StoreData, TrainData
from cascadekit.generator.tasks.controlnet import ControlNetTask
from cascadekit.generator.tasks.controlnet_config import STORE_FIELD, ControlNetTrainConfig
from cascadekit.generator.training.loop import TrainingLoop, TrainResult


def open_controlnet_data(data: str | Path, cfg: ControlNetTrainConfig) -> StoreData:
    """The store as training data with the control's field (when stored) and the source paths (for on the fly)."""
    return StoreData(data, extra=(STORE_FIELD[cfg.control], "source"))


def controlnet_loop(data: str | Path | TrainData, cfg: ControlNetTrainConfig, out: str | Path, *,
                    init: str | Path | None = None, resume: bool = False, device: str | torch.device | None = None,
                    text_encoder: Any = None, image_encoder: Any = None,
                    model_overrides: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> TrainingLoop:
    """The :class:`TrainingLoop` of a ControlNet run (everything checked, nothing trained yet)."""
    source = open_controlnet_data(data, cfg.validate()) if isinstance(data, (str, Path)) else data
    task = ControlNetTask(cfg, init=init, text_encoder=text_encoder, image_encoder=image_encoder,
                          model_overrides=model_overrides, log=log)
    return TrainingLoop(task, source, cfg, out, resume=resume, device=device, log=log)


def train_controlnet(data: str | Path | TrainData, cfg: ControlNetTrainConfig, out: str | Path, *,
                     init: str | Path | None = None, resume: bool = False, device: str | torch.device | None = None,
                     text_encoder: Any = None, image_encoder: Any = None,
                     model_overrides: dict[str, Any] | None = None, stop_after: int | None = None,
                     log: Callable[[str], None] = print) -> TrainResult:
    """Train a ControlNet on ``data`` (a store path or TrainData) into the run folder ``out``.

    init: the frozen Stage C's weights (file / folder / hub id; random and seeded without it: tests only).
    text_encoder: for stores without text embeddings. image_encoder: a ``Codec`` for the sr control computed on
    the fly and the Stable Cascade start of an effnet backbone. resume: continue exactly from the newest intact
    checkpoint. Raises InputError before training for a bad config or store (e.g. a control that is neither
    stored nor computable).
    """
    loop = controlnet_loop(data, cfg, out, init=init, resume=resume, device=device, text_encoder=text_encoder,
                           image_encoder=image_encoder, model_overrides=model_overrides, log=log)
    try:
        return loop.run(stop_after=stop_after)
    finally:
        loop.close()
