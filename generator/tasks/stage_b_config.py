"""Stage B fine-tuning configuration: the core settings plus the Stage B task's fields, and the presets.

Defaults follow the released Stage B recipe (``train/train_b.py`` + ``configs/training/finetune_b_{700m,3b}.yaml``):
AdamW at 1e-4 with 1 warm-up update, clipping 1.0, adaptive loss weighting (both released configs), 5 %
caption dropout (-> the empty caption's pooled embedding), 10 % EfficientNet dropout (-> zeros), pyramid
noise on ε, training shift 1, the EfficientNet condition from the store (``on_the_fly_effnet`` recomputes it per
sample at f ~ U(0.5, 1) from the stored crop pixels instead). The released configs say ``shift: 4`` but the official trainer never reads it
(it calls ``diffuse(..., shift=1)``); ``shift`` here is the core's explicit option, 1 unless set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from cascadekit.generator.training.settings import CoreConfig, is_num, need

MODELS = ("tiny", "lite", "big")
_TINY = dict(model="tiny", lr=1e-3, batch_size=4, steps=40, warmup_steps=2, log_every=5, save_every=20,
             loss_weighting="adaptive")  # for tests: `preset: tiny` in a Stage B file, or --config finetune_b_tiny

#: weights file of a checkpoint per preset: the official release names (the tiny set uses the lite names)
WEIGHTS_NAMES = {"lite": "stage_b_lite.safetensors", "big": "stage_b.safetensors", "tiny": "stage_b_lite.safetensors"}


@dataclass
class StageBTrainConfig(CoreConfig):
    """Everything that fixes a Stage B training run except data and output folder (:class:`CoreConfig` +
    the fields below)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # configs/training/finetune_b_700m.yaml (model_version 700M = stage_b_lite)
        "finetune_b_lite": dict(model="lite", lr=1e-4, batch_size=512, steps=10000, warmup_steps=1, save_every=2000,
                                loss_weighting="adaptive", fsdp=True),
        # configs/training/finetune_b_3b.yaml (model_version 3B = stage_b, 1.56B parameters)
        "finetune_b_big": dict(model="big", lr=1e-4, batch_size=256, steps=100000, warmup_steps=1, save_every=1000,
                               loss_weighting="adaptive", fsdp=True),
        "tiny": _TINY,
        "finetune_b_tiny": _TINY,
    }

    task: str = "stage_b"                      # marks a Stage B config file (`cascadekit train` picks the task)
    model: str = "lite"                        # StageB preset: tiny | lite (700M) | big (1.56B)
    caption_dropout: float = 0.05              # -> the empty caption's pooled CLIP embedding
    effnet_dropout: float = 0.1                # -> zeros instead of the EfficientNet latents
    pyramid_noise: bool = True                 # official: on (size range [1, 16], 0.75**i)
    effnet_scales: list = field(default_factory=list)  # stored scales to draw from ([] = every stored scale)
    on_the_fly_effnet: bool = False            # recompute effnet at f ~ U(0.5, 1) per sample from stored pixels
    loss_weighting: str = "adaptive"

    def problems(self) -> list[str]:
        errs = super().problems()
        need(errs, self.task == "stage_b", f"task must be 'stage_b' in a Stage B config, got {self.task!r}")
        need(errs, self.model in MODELS, f"model must be one of {MODELS}, got {self.model!r}")
        for name in ("caption_dropout", "effnet_dropout"):
            v = getattr(self, name)
            need(errs, is_num(v) and 0 <= v <= 1, f"{name} must be a fraction in [0, 1], got {v!r}")
        need(errs, isinstance(self.pyramid_noise, bool), "pyramid_noise must be true or false")
        need(errs, isinstance(self.effnet_scales, list) and all(is_num(s) and 0 < s <= 1 for s in self.effnet_scales),
             f"effnet_scales must be a list of scales in (0, 1] (stored with `encode --effnet-scales`), "
             f"got {self.effnet_scales!r}")
        need(errs, isinstance(self.on_the_fly_effnet, bool), "on_the_fly_effnet must be true or false")
        need(errs, not (self.on_the_fly_effnet is True and self.effnet_scales),
             "on_the_fly_effnet recomputes the EfficientNet condition at a random scale; effnet_scales picks stored "
             "scales: set one of them")
        return errs

    @property
    def weights_name(self) -> str:
        return WEIGHTS_NAMES[self.model]


def is_stage_b_config(data: dict[str, Any] | None) -> bool:
    """Whether a parsed config mapping (or its ``preset``) is a Stage B one."""
    if not isinstance(data, dict):
        return False
    preset = str(data.get("preset", ""))
    return data.get("task") == "stage_b" or (preset in StageBTrainConfig.PRESETS and preset.startswith("finetune_b"))
