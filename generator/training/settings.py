"""The settings of the training core, and what may change when a run is resumed.

:class:`CoreConfig` holds what every trained network shares (optimizer, schedule, clipping, EMA,
precision, distribution, logging, checkpoints, seed). A task's config is a dataclass subclass that adds
its own fields (``cascadekit.generator.config.TrainConfig`` for Stage C). Loading (YAML 1.2 numbers,
JSON, TOML, presets, ``--set`` values) and validation (every bad value reported at once) are here,
shared by all of them.

Resume rule, read from the dataclass itself: a field may change on ``--resume`` only when it is declared
with :func:`changeable` (``metadata={"resume": "changeable"}``). Every other field, including any field
added later without metadata, is fixed: changing it on resume is refused (safe by default).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from cascadekit.codec.errors import InputError

RESUME = "resume"
CHANGEABLE = "changeable"
LOSS_WEIGHTINGS = ("p2", "adaptive")
PRECISIONS = ("auto", "bf16", "fp32")
LR_SCHEDULES = ("constant", "cosine")
SEED_LIMIT = 2**63
C = TypeVar("C", bound="CoreConfig")


def changeable(default: Any) -> Any:
    """A config field that may change on ``--resume`` (intervals, length, how the work is spread)."""
    return field(default=default, metadata={RESUME: CHANGEABLE})


def fixed_on_resume(config_type: type) -> tuple[str, ...]:
    """Names of the fields of ``config_type`` that may NOT change on resume (all not marked changeable)."""
    return tuple(f.name for f in fields(config_type) if f.metadata.get(RESUME) != CHANGEABLE)


def resume_changes(recorded: dict[str, Any], config: "CoreConfig") -> list[str]:
    """``"name: old -> new"`` for every fixed field whose value differs from the ``recorded`` config dict.

    A field the recorded config lacks (a run made before the field existed) counts as its default."""
    new = config.to_dict()
    defaults = type(config)().to_dict()
    fixed = fixed_on_resume(type(config))
    old = {k: recorded.get(k, defaults[k]) for k in fixed}
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in fixed if old[k] != new[k]]


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats: PyYAML (YAML 1.1) reads ``1e-4`` (no dot) as the STRING '1e-4'."""


_Yaml12Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_value(text: str) -> Any:
    """Parse YAML with YAML 1.2 numbers (``lr: 1e-4`` is a number). Raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)


def parse_overrides(items: list[str] | tuple[str, ...], flag: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` strings (VALUE in YAML) -> ``{KEY: value}``; a malformed item names ``flag``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        try:
            out[key.strip()] = yaml_value(text)
        except yaml.YAMLError as e:
            raise InputError(f"{flag} {item!r}: the value is not valid YAML ({_first_line(e)})") from None
    return out


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _parse_file(p: Path) -> Any:
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            return yaml_value(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            import tomllib  # only for TOML configs

            return tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 - the parse errors of the three formats
        raise InputError(f"training config {p} could not be parsed: {_first_line(e)}") from e
    raise InputError(f"training config {p}: unknown extension {suffix!r}; use .yaml, .json or .toml")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class CoreConfig:
    """What the training core needs, whatever the network (a task's config subclasses it).

    ``batch_size`` is the GLOBAL batch per optimizer update: each of ``world_size`` processes runs
    ``grad_accum_steps`` micro-batches of ``batch_size // (world_size * grad_accum_steps)`` samples
    (the official convention), so a run gives the same result on 1 or N processes.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    steps: int = changeable(1000)             # optimizer updates
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
    loss_weighting: str = "p2"                # p2 | adaptive
    shift: float = 1.0                        # noise schedule shift during training (official 1)
    loss_shift: float = 1.0
    precision: str = "auto"                   # auto: bf16 autocast on CUDA, fp32 on CPU
    gradient_checkpointing: bool = changeable(False)
    fsdp: bool = changeable(False)            # FULL_SHARD, one unit per block (with torchrun)
    log_every: int = changeable(10)
    tensorboard: bool = changeable(False)     # also write scalars to RUN/tensorboard (needs `tensorboard`)
    preview_every: int = changeable(0)        # 0: no previews
    preview_steps: int = changeable(20)
    preview_count: int = changeable(4)
    save_every: int = changeable(500)
    keep_checkpoints: int = changeable(2)
    seed: int = 0                             # 0 <= seed < 2**63

    # ------------------------------------------------------------------ loading
    @classmethod
    def preset(cls: type[C], name: str) -> C:
        """A named preset of ``cls.PRESETS``."""
        if name not in cls.PRESETS:
            raise InputError(f"unknown training preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        return cls(**cls.PRESETS[name]).validate()

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a mapping; a ``preset`` key starts from that preset. Unknown keys are an error."""
        data = dict(data)
        base = cls.preset(data.pop("preset")) if "preset" in data else cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown training config key(s) {unknown}; valid keys: {sorted(known)}")
        return dataclasses.replace(base, **cls._normalise(data)).validate()

    @classmethod
    def _normalise(cls, data: dict[str, Any]) -> dict[str, Any]:
        """File values -> field types (YAML/JSON lists for tuples); subclasses extend it."""
        if isinstance(data.get("adam_betas"), list):
            data["adam_betas"] = tuple(data["adam_betas"])
        return data

    @classmethod
    def from_file(cls: type[C], path: str | Path) -> C:
        """Load a ``.yaml``/``.yml``, ``.json`` or ``.toml`` file (a preset name is accepted too)."""
        p = Path(path)
        if not p.exists():
            if str(path) in cls.PRESETS:
                return cls.preset(str(path))
            raise InputError(f"training config {path} does not exist (give a .yaml/.json/.toml file or a preset "
                             f"name: {', '.join(sorted(cls.PRESETS))})")
        if not p.is_file():
            raise InputError(f"training config {p} is not a file")
        data = _parse_file(p)
        if data is None or data == {}:
            raise InputError(f"training config {p} is empty; give the values to change, or start from a preset "
                             f"(`preset: NAME`, one of {', '.join(sorted(cls.PRESETS))})")
        if not isinstance(data, dict):
            raise InputError(f"training config {p} must hold a mapping of keys to values, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    # ------------------------------------------------------------------ checks
    def validate(self: C) -> C:
        """Raise :class:`InputError` naming every bad value (all at once)."""
        errs = self.problems()
        if errs:
            raise InputError("bad training config:\n  " + "\n  ".join(errs))
        return self

    def problems(self) -> list[str]:
        """Every bad value of the core fields, as sentences (a task config adds its own)."""
        errs: list[str] = []
        for name in ("steps", "batch_size", "grad_accum_steps", "ema_every", "log_every", "save_every",
                     "preview_steps", "preview_count", "keep_checkpoints"):
            v = getattr(self, name)
            need(errs, is_int(v) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        for name in ("warmup_steps", "ema_start_step", "preview_every"):
            v = getattr(self, name)
            need(errs, is_int(v) and v >= 0, f"{name} must be an integer >= 0, got {v!r}")
        need(errs, is_int(self.seed) and 0 <= self.seed < SEED_LIMIT,
              f"seed must be an integer with 0 <= seed < 2**63, got {self.seed!r}")
        need(errs, is_num(self.lr) and 0 < self.lr < 1, f"lr must be a number in (0, 1), got {self.lr!r}")
        need(errs, self.lr_schedule in LR_SCHEDULES,
              f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        need(errs, is_num(self.weight_decay) and self.weight_decay >= 0,
              f"weight_decay must be >= 0, got {self.weight_decay!r}")
        b = self.adam_betas
        need(errs, isinstance(b, tuple) and len(b) == 2 and all(is_num(x) and 0 <= x < 1 for x in b),
              f"adam_betas must be two numbers in [0, 1), got {b!r}")
        for name in ("adam_eps", "grad_clip", "shift", "loss_shift"):
            v = getattr(self, name)
            need(errs, is_num(v) and v > 0, f"{name} must be > 0, got {v!r}")
        need(errs, self.ema_decay is None or (is_num(self.ema_decay) and 0 < self.ema_decay < 1),
              f"ema_decay must be null or a number in (0, 1), got {self.ema_decay!r}")
        need(errs, self.loss_weighting in LOSS_WEIGHTINGS,
              f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        need(errs, self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("gradient_checkpointing", "fsdp", "tensorboard"):
            need(errs, isinstance(getattr(self, name), bool), f"{name} must be true or false")
        if is_int(self.batch_size) and is_int(self.grad_accum_steps) and self.grad_accum_steps >= 1:
            need(errs, self.batch_size % self.grad_accum_steps == 0,
                  f"batch_size ({self.batch_size}) must be divisible by grad_accum_steps ({self.grad_accum_steps})")
        if self.fsdp and self.ema_decay is not None:
            errs.append("fsdp with ema_decay is not supported (the EMA would hold only this rank's shard); "
                        "set ema_decay: null or use DDP")
        return errs

    def micro_batch(self, world_size: int) -> int:
        """Samples per process per micro-batch; raises if the global batch does not split evenly."""
        per = self.batch_size // self.grad_accum_steps
        if per % world_size:
            raise InputError(
                f"batch_size {self.batch_size} / grad_accum_steps {self.grad_accum_steps} = {per} samples per "
                f"micro-step do not split over {world_size} processes; pick a batch_size divisible by "
                f"{self.grad_accum_steps * world_size}")
        return per // world_size


def need(errs: list[str], cond: bool, msg: str) -> None:
    if not cond:
        errs.append(msg)
