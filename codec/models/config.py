"""The shared shape of every model config: a dataclass of the official constructor kwargs plus named presets."""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import ClassVar


class ModelConfig:
    """Mixin for ``@dataclass`` configs whose fields are exactly a model's constructor keyword arguments.

    Subclasses set ``PRESETS``: preset name -> the field values that differ from the official defaults.
    """

    PRESETS: ClassVar[dict[str, dict]] = {}

    @classmethod
    def preset(cls, name: str):
        """The config of preset ``name`` (``ValueError`` naming the known presets otherwise)."""
        if name not in cls.PRESETS:
            model = cls.__name__.removesuffix("Config")
            raise ValueError(f"unknown {model} preset {name!r}; choose one of {', '.join(cls.PRESETS)}")
        return cls(**copy.deepcopy(cls.PRESETS[name]))  # never share a preset's lists with a caller

    def kwargs(self) -> dict:
        """The constructor keyword arguments, as a fresh dict."""
        return asdict(self)
