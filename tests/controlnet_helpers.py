"""Random ControlNet files in the official key layout, sized for the tiny Stage C (test helper)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from cascadekit.codec.models.controlnet import ControlNet

# the tiny Stage C's ResBlock calls have channels [32, 64, 64, 64, 64, 64, 64, 32]: these slots have 64
TINY_PROJ_BLOCKS = [1, 3, 5]
TINY_C_PROJ = 64
C_IN = {"canny": 1, "inpainting": 4, "sr": 16}


def tiny_controlnet(control: str, c_proj: int = TINY_C_PROJ, proj_blocks=TINY_PROJ_BLOCKS, seed: int = 0,
                    mode: str | None = None) -> ControlNet:
    """A small random ControlNet (``simple`` bottleneck, or ``large`` with small widths for sr); every weight random."""
    torch.manual_seed(seed)
    mode = mode or ("large" if control == "sr" else "simple")
    net = ControlNet(c_in=C_IN[control], c_proj=c_proj, proj_blocks=list(proj_blocks), bottleneck_mode=mode,
                     large_widths=(24, 16, 16))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.05)  # the zero-initialised last conv too: the control must act
    return net.eval()


def write_controlnet(path: Path, control: str, metadata: bool = True, **kwargs) -> Path:
    """Write :func:`tiny_controlnet` as ``path`` (official keys; ``proj_blocks`` in the metadata if asked)."""
    net = tiny_controlnet(control, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"proj_blocks": json.dumps(net.proj_blocks)} if metadata else None
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=meta)
    return path
