"""ControlNet training configuration: the Stage C fields (the frozen prior's conditioning) plus the ControlNet's.

Defaults follow the released recipe (``train/train_c_controlnet.py`` + ``configs/training/controlnet_c_3b_*.yaml``):
AdamW at 1e-4 with 1 warm-up update, clipping 1.0, ε target with P2 weight, 5 % caption dropout, CLIP image
embeddings on 10 % of the samples when stored, ``offset_noise`` 0.1 for inpainting and super-resolution (0 for
canny, commented out there), ``controlnet_blocks`` [0,4,8,12,51,55,59,63] for the 3.6B Stage C
(``auto``: those positions scaled to the Stage C's ResBlock-call count, see :func:`resolve_blocks`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from cascadekit.codec.models.controlnet import BOTTLENECK_MODES, OFFICIAL_LARGE_WIDTHS
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.training.settings import is_int, is_num, need

TRAIN_CONTROLS = ("canny", "inpainting", "sr")
#: the store field (datasets/controls.py) each control is precomputed into
STORE_FIELD = {"canny": "control_canny", "inpainting": "control_inpaint", "sr": "control_sr"}
C_IN = {"canny": 1, "inpainting": 4, "sr": 16}
DEFAULT_BOTTLENECK = {"canny": "effnet", "inpainting": "effnet", "sr": "large"}
BACKBONE_INITS = ("auto", "imagenet", "stable_cascade", "random")

_OFFICIAL = dict(model="big", lr=1e-4, batch_size=256, warmup_steps=1, save_every=1000)


@dataclass
class ControlNetTrainConfig(TrainConfig):
    """A ControlNet training run (:class:`TrainConfig` for the frozen Stage C and the core + these fields)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "controlnet_canny": dict(_OFFICIAL, control="canny", steps=10000),
        "controlnet_inpainting": dict(_OFFICIAL, control="inpainting", steps=10000, offset_noise=0.1),
        "controlnet_sr": dict(_OFFICIAL, control="sr", steps=30000, offset_noise=0.1),
    }

    task: str = "controlnet"                  # marks a ControlNet config file (`cascadekit train` picks the task)
    control: str = "canny"                    # canny | inpainting | sr
    model: str = "big"                        # the frozen Stage C preset
    controlnet_blocks: Any = "auto"           # ResBlock-call slots; auto = official, scaled to the Stage C
    bottleneck_mode: str = ""                 # "" = the control's official one (effnet; large for sr)
    large_widths: list = field(default_factory=lambda: list(OFFICIAL_LARGE_WIDTHS))
    offset_noise: float = 0.0                 # official: 0.1 for inpainting and sr
    p_outpaint: float = 0.4                   # inpainting: probability a mask is inverted (outpainting)
    saliency_model: str = ""                  # inpainting: the official saliency_model.pt -> official masks
    backbone_init: str = "auto"               # effnet bottleneck: auto | imagenet | stable_cascade | random
    controlnet_init: str = ""                 # start from this ControlNet file (official keys)

    @property
    def bottleneck(self) -> str:
        return self.bottleneck_mode or DEFAULT_BOTTLENECK.get(self.control, "effnet")

    def problems(self) -> list[str]:
        errs = super().problems()
        need(errs, self.task == "controlnet", f"task must be 'controlnet' in a ControlNet config, got {self.task!r}")
        need(errs, self.control in TRAIN_CONTROLS, f"control must be one of {TRAIN_CONTROLS}, got {self.control!r}")
        need(errs, self.bottleneck_mode in ("", *BOTTLENECK_MODES),
             f"bottleneck_mode must be one of {BOTTLENECK_MODES} (or empty: the control's own), "
             f"got {self.bottleneck_mode!r}")
        b = self.controlnet_blocks
        need(errs, b == "auto" or (isinstance(b, list) and b and all(is_int(x) and x >= 0 for x in b)
                                   and len(set(b)) == len(b)),
             f"controlnet_blocks must be 'auto' or a list of distinct ResBlock-call indices >= 0, got {b!r}")
        need(errs, isinstance(self.large_widths, list) and len(self.large_widths) == 3
             and all(is_int(x) and x >= 1 for x in self.large_widths),
             f"large_widths must be three integers >= 1, got {self.large_widths!r}")
        for name in ("offset_noise", "p_outpaint"):
            v = getattr(self, name)
            need(errs, is_num(v) and 0 <= v <= 1, f"{name} must be a number in [0, 1], got {v!r}")
        need(errs, self.backbone_init in BACKBONE_INITS,
             f"backbone_init must be one of {BACKBONE_INITS}, got {self.backbone_init!r}")
        need(errs, not self.saliency_model or self.control == "inpainting",
             f"saliency_model is for the inpainting control (its training masks), not {self.control!r}")
        need(errs, self.lora_rank == 0 and not self.train_tokens,
             "a ControlNet run trains the ControlNet only: lora_rank must be 0 and train_tokens empty")
        return errs


def controlnet_config_of(config: str) -> "ControlNetTrainConfig | None":
    """The ControlNet config named by ``config`` (a preset name or a file with ``task: controlnet`` / a
    ``controlnet_*`` preset), or None when it is another kind of training config."""
    from pathlib import Path

    from cascadekit.generator.training.settings import _parse_file

    if str(config) in ControlNetTrainConfig.PRESETS and not Path(config).exists():
        return ControlNetTrainConfig.preset(str(config))
    p = Path(config)
    if p.is_file() and is_controlnet_config(_parse_file(p)):
        return ControlNetTrainConfig.from_file(p)
    return None


def is_controlnet_config(data: Any) -> bool:
    """Whether a parsed config mapping (or its ``preset``) is a ControlNet one."""
    if not isinstance(data, dict):
        return False
    return data.get("task") == "controlnet" or str(data.get("preset", "")) in ControlNetTrainConfig.PRESETS


__all__ = ["C_IN", "ControlNetTrainConfig", "STORE_FIELD", "TRAIN_CONTROLS", "controlnet_config_of",
           "is_controlnet_config"]
