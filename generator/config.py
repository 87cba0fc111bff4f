"""Training configuration: one dataclass, named presets, loaded from YAML / JSON / TOML, validated early.

Defaults follow the released Stage C recipe (``train/train_c.py`` + ``configs/training/finetune_c_*.yaml``):
AdamW at 1e-4 with a linear warm-up, gradient clipping at 1.0, 5% caption dropout, CLIP image
embeddings on 10% of the samples when the store has them, P2 loss weighting (or the adaptive
weighting of the 3.6B fine-tune), bf16 autocast on CUDA.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cascadekit.codec.errors import InputError

MODELS = ("tiny", "lite", "big")
LOSS_WEIGHTINGS = ("p2", "adaptive")
PRECISIONS = ("auto", "bf16", "fp32")
LR_SCHEDULES = ("constant", "cosine")


def yaml_value(text: str) -> Any:
    """Parse YAML with YAML 1.2 numbers: PyYAML (YAML 1.1) reads ``1e-4`` (no dot) as the STRING '1e-4',
    which would turn ``lr: 1e-4`` into a confusing type error."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)


@dataclass
class TrainConfig:
    """Everything that fixes a Stage C training run (except the data and the output folder).

    ``batch_size`` is the GLOBAL batch per optimizer update: each of ``world_size`` processes runs
    ``grad_accum_steps`` micro-batches of ``batch_size // (world_size * grad_accum_steps)`` samples
    (the official convention), so a run gives the same result on 1 or N processes.
    """

    model: str = "lite"                       # StageC preset: tiny | lite (1B) | big (3.6B)
    steps: int = 1000                         # optimizer updates
    batch_size: int = 32                      # global samples per update
    grad_accum_steps: int = 1
    lr: float = 1.0e-4
    lr_schedule: str = "constant"             # after warm-up: constant (official) | cosine to 0
    warmup_steps: int = 1                     # linear warm-up (official warmup_updates)
    weight_decay: float = 0.01                # AdamW default, as the official optimizer
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1.0e-8
    grad_clip: float = 1.0
    ema_decay: float | None = None            # None: no EMA (the released configs leave it off)
    ema_start_step: int = 0                   # EMA copies the weights until this update
    ema_every: int = 1
    caption_dropout: float = 0.05             # -> empty-caption embeddings (the unconditional)
    image_embedding_fraction: float = 0.1     # samples that get their stored CLIP image embedding
    loss_weighting: str = "p2"                # p2 | adaptive
    shift: float = 1.0                        # noise schedule shift during training (official 1)
    loss_shift: float = 1.0
    precision: str = "auto"                   # auto: bf16 autocast on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False
    fsdp: bool = False                        # FULL_SHARD, one unit per block (with torchrun)
    log_every: int = 10
    tensorboard: bool = False                 # also write scalars to RUN/tensorboard (needs `tensorboard`)
    preview_every: int = 0                    # 0: no previews
    preview_steps: int = 20
    preview_count: int = 4
    save_every: int = 500
    keep_checkpoints: int = 2
    lora_rank: int = 0                        # 0: full fine-tuning
    lora_alpha: float = 1.0
    lora_targets: list[str] = field(default_factory=lambda: [".attn"])
    seed: int = 0

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str) -> "TrainConfig":
        """Named presets: ``finetune_c_lite`` / ``finetune_c_big`` (released configs), ``lora_c_big``,
        ``tiny`` (CPU tests / smoke runs)."""
        presets = {
            "finetune_c_lite": dict(model="lite", lr=1e-4, batch_size=1024, steps=10000, warmup_steps=1, save_every=2000),
            "finetune_c_big": dict(model="big", lr=1e-4, batch_size=512, steps=100000, warmup_steps=1, save_every=2000,
                                   loss_weighting="adaptive", fsdp=True, gradient_checkpointing=True),
            "lora_c_big": dict(model="big", lr=1e-4, batch_size=32, grad_accum_steps=4, steps=10000, save_every=100,
                               lora_rank=4, lora_targets=[".attn"]),
            "tiny": dict(model="tiny", lr=1e-3, batch_size=4, steps=40, warmup_steps=2, log_every=5, save_every=20),
        }
        if name not in presets:
            raise InputError(f"unknown training preset {name!r}; choose one of {sorted(presets)}")
        return cls(**presets[name]).validate()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a mapping; a ``preset`` key starts from that preset. Unknown keys are an error."""
        data = dict(data)
        base = cls.preset(data.pop("preset")) if "preset" in data else cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown training config key(s) {unknown}; valid keys: {sorted(known)}")
        if "adam_betas" in data and data["adam_betas"] is not None:
            data["adam_betas"] = tuple(data["adam_betas"])
        if "lora_targets" in data and isinstance(data["lora_targets"], str):
            data["lora_targets"] = [data["lora_targets"]]
        return dataclasses.replace(base, **data).validate()

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """Load a ``.yaml``/``.yml``, ``.json`` or ``.toml`` file (a preset name is accepted too)."""
        p = Path(path)
        if not p.exists():
            if str(path) in ("finetune_c_lite", "finetune_c_big", "lora_c_big", "tiny"):
                return cls.preset(str(path))
            raise InputError(f"training config {path} does not exist (give a .yaml/.json/.toml file or a preset name)")
        text = p.read_text(encoding="utf-8")
        suffix = p.suffix.lower()
        try:
            if suffix in (".yaml", ".yml"):
                data = yaml_value(text) or {}
            elif suffix == ".json":
                data = json.loads(text)
            elif suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                raise InputError(f"training config {p}: unknown extension {suffix!r}; use .yaml, .json or .toml")
        except InputError:
            raise
        except Exception as e:  # parse errors of the three formats
            raise InputError(f"training config {p} could not be parsed: {e}") from e
        if not isinstance(data, dict):
            raise InputError(f"training config {p} must hold a mapping of keys to values, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        """Raise :class:`InputError` naming every bad value (all at once)."""
        errs: list[str] = []

        def need(cond: bool, msg: str):
            if not cond:
                errs.append(msg)

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(self.model in MODELS, f"model must be one of {MODELS}, got {self.model!r}")
        for name in ("steps", "batch_size", "grad_accum_steps", "ema_every", "log_every", "save_every",
                     "preview_steps", "preview_count", "keep_checkpoints"):
            v = getattr(self, name)
            need(is_int(v) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        for name in ("warmup_steps", "ema_start_step", "preview_every", "lora_rank", "seed"):
            v = getattr(self, name)
            need(is_int(v) and v >= 0, f"{name} must be an integer >= 0, got {v!r}")
        need(is_num(self.lr) and 0 < self.lr < 1, f"lr must be a number in (0, 1), got {self.lr!r}")
        need(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        betas = self.adam_betas
        need(isinstance(betas, tuple) and len(betas) == 2 and all(is_num(b) and 0 <= b < 1 for b in betas),
             f"adam_betas must be two numbers in [0, 1), got {betas!r}")
        need(is_num(self.adam_eps) and self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps!r}")
        need(is_num(self.grad_clip) and self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip!r}")
        need(self.ema_decay is None or (is_num(self.ema_decay) and 0 < self.ema_decay < 1),
             f"ema_decay must be null or a number in (0, 1), got {self.ema_decay!r}")
        for name in ("caption_dropout", "image_embedding_fraction"):
            v = getattr(self, name)
            need(is_num(v) and 0 <= v <= 1, f"{name} must be a fraction in [0, 1], got {v!r}")
        need(self.loss_weighting in LOSS_WEIGHTINGS, f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        need(is_num(self.shift) and self.shift > 0, f"shift must be > 0, got {self.shift!r}")
        need(is_num(self.loss_shift) and self.loss_shift > 0, f"loss_shift must be > 0, got {self.loss_shift!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        need(isinstance(self.gradient_checkpointing, bool), "gradient_checkpointing must be true or false")
        need(isinstance(self.fsdp, bool), "fsdp must be true or false")
        need(isinstance(self.tensorboard, bool), "tensorboard must be true or false")
        need(is_num(self.lora_alpha) and self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        need(isinstance(self.lora_targets, list) and len(self.lora_targets) > 0
             and all(isinstance(t, str) and t for t in self.lora_targets),
             f"lora_targets must be a non-empty list of module-name substrings, got {self.lora_targets!r}")
        if is_int(self.batch_size) and is_int(self.grad_accum_steps) and self.grad_accum_steps >= 1:
            need(self.batch_size % self.grad_accum_steps == 0,
                 f"batch_size ({self.batch_size}) must be divisible by grad_accum_steps ({self.grad_accum_steps})")
        if self.fsdp and self.lora_rank > 0:
            errs.append("fsdp with LoRA is not supported (LoRA trains a few million parameters: use DDP)")
        if self.fsdp and self.ema_decay is not None:
            errs.append("fsdp with ema_decay is not supported (the EMA would hold only this rank's shard); "
                        "set ema_decay: null or use DDP")
        if errs:
            raise InputError("bad training config:\n  " + "\n  ".join(errs))
        return self

    def micro_batch(self, world_size: int) -> int:
        """Samples per process per micro-batch; raises if the global batch does not split evenly."""
        per = self.batch_size // self.grad_accum_steps
        if per % world_size:
            raise InputError(
                f"batch_size {self.batch_size} / grad_accum_steps {self.grad_accum_steps} = {per} samples per "
                f"micro-step do not split over {world_size} processes; pick a batch_size divisible by "
                f"{self.grad_accum_steps * world_size}")
        return per // world_size
