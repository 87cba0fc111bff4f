"""Stage C training configuration: the core settings plus the Stage C task's own fields, and the presets.

Defaults follow the released Stage C recipe (``train/train_c.py`` + ``configs/training/finetune_c_*.yaml``):
AdamW at 1e-4 with a linear warm-up, gradient clipping at 1.0, 5% caption dropout, CLIP image
embeddings on 10% of the samples when the store has them, P2 loss weighting (or the adaptive
weighting of the 3.6B fine-tune), bf16 autocast on CUDA. Loading, validation and the resume rule
(fields declared with ``changeable`` may change on ``--resume``, every other field may not) come from
:mod:`cascadekit.generator.training.settings`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from cascadekit.generator.retoken import train_token_problems
from cascadekit.generator.training.settings import CoreConfig, is_int, is_num, need, yaml_value

MODELS = ("tiny", "lite", "big")
__all__ = ["MODELS", "TrainConfig", "yaml_value"]


@dataclass
class TrainConfig(CoreConfig):
    """Everything that fixes a Stage C training run (except the data and the output folder): the
    :class:`CoreConfig` fields (optimizer, schedule, EMA, precision, checkpoints, seed ...) and these."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "finetune_c_lite": dict(model="lite", lr=1e-4, batch_size=1024, steps=10000, warmup_steps=1, save_every=2000),
        "finetune_c_big": dict(model="big", lr=1e-4, batch_size=512, steps=100000, warmup_steps=1, save_every=2000,
                               loss_weighting="adaptive", fsdp=True, gradient_checkpointing=True),
        "lora_c_big": dict(model="big", lr=1e-4, batch_size=32, grad_accum_steps=4, steps=10000, save_every=100,
                           lora_rank=4, lora_targets=[".attn"]),
        "tiny": dict(model="tiny", lr=1e-3, batch_size=4, steps=40, warmup_steps=2, log_every=5, save_every=20),
    }

    model: str = "lite"                       # StageC preset: tiny | lite (1B) | big (3.6B)
    caption_dropout: float = 0.05             # -> empty-caption embeddings (the unconditional)
    image_embedding_fraction: float = 0.1     # samples that get their stored CLIP image embedding
    lora_rank: int = 0                        # 0: full fine-tuning
    lora_alpha: float = 1.0
    lora_targets: list[str] = field(default_factory=lambda: [".attn"])
    lora_init: str = "default"                # "official": lora_down zeros, lora_up N(0, 1) (train_c_lora.py)
    train_tokens: list = field(default_factory=list)  # new-token LoRA (tasks/lora_tokens.py): [["[x]", "^dog</w>"]]

    @classmethod
    def _normalise(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = super()._normalise(data)
        if isinstance(data.get("lora_targets"), str):
            data["lora_targets"] = [data["lora_targets"]]
        return data

    def problems(self) -> list[str]:
        errs = super().problems()
        need(errs, self.model in MODELS, f"model must be one of {MODELS}, got {self.model!r}")
        for name in ("caption_dropout", "image_embedding_fraction"):
            v = getattr(self, name)
            need(errs, is_num(v) and 0 <= v <= 1, f"{name} must be a fraction in [0, 1], got {v!r}")
        need(errs, is_int(self.lora_rank) and self.lora_rank >= 0,
              f"lora_rank must be an integer >= 0, got {self.lora_rank!r}")
        need(errs, is_num(self.lora_alpha) and self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        need(errs, isinstance(self.lora_targets, list) and len(self.lora_targets) > 0
              and all(isinstance(t, str) and t for t in self.lora_targets),
              f"lora_targets must be a non-empty list of module-name substrings, got {self.lora_targets!r}")
        need(errs, self.lora_init in ("default", "official"),
             f"lora_init must be 'default' (down Kaiming-uniform, up zeros) or 'official' (down zeros, up N(0, 1)), "
             f"got {self.lora_init!r}")
        errs += train_token_problems(self)
        if self.fsdp and is_int(self.lora_rank) and self.lora_rank > 0:
            errs.append("fsdp with LoRA is not supported (LoRA trains a few million parameters: use DDP)")
        return errs
