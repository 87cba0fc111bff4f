"""Train Stage C on precomputed semantic latents (no image encoder in the loop): ``cascadekit train``.

The released recipe (``train/train_c.py``): epsilon objective under the cosine schedule (shift 1),
the network sees ``r = noise_cond(logSNR)``; per-sample MSE weighted by P2 (or the adaptive bucket
weighting), AdamW with linear warm-up, gradient clipping at 1.0, optional EMA, bf16 autocast on CUDA,
gradient accumulation, gradient checkpointing, DDP / FSDP through torchrun, LoRA.

This module only joins the two halves: the training core (:mod:`cascadekit.generator.training`) and the
Stage C task (:mod:`cascadekit.generator.tasks.stage_c`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from cascadekit.generator.config import TrainConfig
from cascadekit.generator.data import TrainData, open_store
from cascadekit.generator.tasks.lora_tokens import TokenLoRATask
from cascadekit.generator.tasks.stage_c import StageCTask, data_problems, stage_c_config
from cascadekit.generator.training.loop import TrainingDivergedError, TrainingLoop, TrainResult

__all__ = ["Trainer", "TrainResult", "TrainingDivergedError", "data_problems", "stage_c_config", "train"]


class Trainer(TrainingLoop):
    """A Stage C training run: the training core driving a :class:`StageCTask` (see :func:`train`)."""

    def __init__(self, data: TrainData, cfg: TrainConfig, run_dir: str | Path, *, init: str | Path | None = None,
                 resume: bool = False, device: str | torch.device | None = None,
                 text_encoder: Any = None, previewer: nn.Module | None = None,
                 model_overrides: dict[str, Any] | None = None, log: Callable[[str], None] = print):
        kind = TokenLoRATask if cfg.train_tokens else StageCTask  # new tokens: the new-token LoRA task
        task = kind(cfg.validate(), init=init, text_encoder=text_encoder, previewer=previewer,
                    model_overrides=model_overrides)
        super().__init__(task, data, cfg, run_dir, resume=resume, device=device, log=log)


def train(data: str | Path | TrainData, config: TrainConfig, out: str | Path, *, init: str | Path | None = None,
          resume: bool = False, device: str | torch.device | None = None, text_encoder: Any = None,
          previewer: nn.Module | None = None, model_overrides: dict[str, Any] | None = None,
          stop_after: int | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train Stage C on a latent store (path or :class:`~cascadekit.generator.data.TrainData`).

    out: the run folder (checkpoints/, previews/, train_log.jsonl, run.json). init: official Stage C
    weights to fine-tune (file/folder/hub id; required for LoRA). resume: continue from the run's newest
    intact checkpoint (an error when there is none). text_encoder: an object with
    ``encode(captions) -> (clip_text, clip_text_pooled)``, needed when the store has no text embeddings
    (or for empty-caption embeddings). previewer: a Previewer for PNG previews every ``preview_every``
    updates. model_overrides: StageC constructor arguments that replace the preset's (e.g.
    ``{"dropout": [0, 0]}``).
    Raises InputError before training for bad config/data, TrainingDivergedError on NaN/inf.
    """
    source = open_store(data) if isinstance(data, (str, Path)) else data
    trainer = Trainer(source, config, out, init=init, resume=resume, device=device, text_encoder=text_encoder,
                      previewer=previewer, model_overrides=model_overrides, log=log)
    try:
        return trainer.run(stop_after=stop_after)
    finally:
        trainer.close()
