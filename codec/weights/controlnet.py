"""Find and load the official Stable Cascade ControlNets (``controlnet/{canny,inpainting,super_resolution}.safetensors``).

``load_controlnet(source, control=None)`` accepts

* a file (``.safetensors``, or ``.pt/.pth`` through ``torch.load(weights_only=True)``);
* a folder holding ``controlnet/<name>.safetensors`` or ``<name>.safetensors`` (the official release keeps them
  in ``controlnet/`` of ``stabilityai/stable-cascade``);
* a hub id (``owner/name``): its ``controlnet/<name>.safetensors`` through the huggingface_hub cache
  (``HF_HUB_OFFLINE=1``: the cache only).

The configuration is read from the keys, never guessed from the file name: ``backbone.0.0.weight``
[24, c_in, 3, 3] -> ``effnet``; ``backbone.0.weight`` [W1, c_in, 1, 1] + ``backbone.3.blocks.*`` -> ``large``
(widths from ``backbone.0/2/11``); ``backbone.0.weight`` [4·c_in, c_in, 3, 3] -> ``simple``. ``c_proj`` is
``projections.0.2.weight``'s first dimension. ``proj_blocks`` is not in the keys: a ``proj_blocks`` entry of
the safetensors metadata (JSON list, written by cascadekit) wins, else the official
[0, 4, 8, 12, 51, 55, 59, 63] for a file with 8 projections. The control a file serves follows from c_in
(1 canny, 4 inpainting, 16 super-resolution). :func:`check_fits_stage_c` tells a ControlNet made for another
Stage C apart before any sampling.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.models.controlnet import (
    OFFICIAL_PROJ_BLOCKS,
    ControlNet,
    ControlNetConfig,
    resblock_call_channels,
)
from cascadekit.codec.weights.assign import build
from cascadekit.codec.weights.hub import offline_reason
from cascadekit.codec.weights.io import read_state_dict, safetensors_header

HUB_FOLDER = "controlnet"
# control -> (official file name, ControlNet input channels)
CONTROLNET_FILES = {"canny": ("canny.safetensors", 1), "inpainting": ("inpainting.safetensors", 4),
                    "sr": ("super_resolution.safetensors", 16)}
ALIASES = {"super_resolution": "sr", "super-resolution": "sr", "inpaint": "inpainting", "outpainting": "inpainting"}


def control_name(control: str) -> str:
    """'canny' | 'inpainting' | 'sr' (accepts inpaint / super_resolution); InputError for anything else."""
    name = ALIASES.get(str(control).lower(), str(control).lower())
    if name not in CONTROLNET_FILES:
        raise InputError(f"unknown control {control!r}; choose one of {', '.join(CONTROLNET_FILES)}")
    return name


@dataclass
class ControlNetInfo:
    """What was loaded: the file, the control it serves (from its input channels) and its config."""

    path: Path
    control: str
    config: ControlNetConfig


# ------------------------------------------------------------------------------------------- finding


def _is_hub_id(source: str) -> bool:
    parts = source.split("/")
    return not os.path.exists(source) and not source.startswith((".", "/", "~")) and len(parts) == 2 and all(parts)


def _from_hub(repo_id: str, filename: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsError(f"{repo_id}: huggingface_hub is not installed; pass a local ControlNet file") from None
    offline = offline_reason()  # the same offline variables as every other hub download
    try:
        return Path(hf_hub_download(repo_id, f"{HUB_FOLDER}/{filename}", local_files_only=bool(offline),
                                    etag_timeout=10))
    except Exception as e:  # offline, not cached, gated, no such file ...
        why = f"offline ({offline}) and not in the local hub cache" if offline else f"{type(e).__name__}: {e}"
        raise WeightsError(f"cannot get {HUB_FOLDER}/{filename} from hub:{repo_id} ({str(why).splitlines()[0]}); "
                           "pass a local ControlNet file or folder") from None


def resolve_controlnet(source: str | os.PathLike, control: str | None = None) -> Path:
    """The ControlNet file for ``control`` at ``source`` (file, folder or hub id); WeightsError naming what was tried."""
    names = [CONTROLNET_FILES[control_name(control)][0]] if control else [f for f, _ in CONTROLNET_FILES.values()]
    s = str(source)
    p = Path(os.path.expanduser(s))
    if p.is_file():
        return p
    if p.is_dir():
        tried = [p / HUB_FOLDER / n for n in names] + [p / n for n in names]
        found = [t for t in tried if t.is_file()]
        if len(found) == 1 or (found and control):
            return found[0]
        if found:
            raise InputError(f"{p} holds several ControlNets ({', '.join(f.name for f in found)}); "
                             "say which control you want (canny, inpainting or sr)")
        raise WeightsError(f"no ControlNet in {p}; looked for " + ", ".join(str(t) for t in tried))
    if _is_hub_id(s):
        if not control:
            raise InputError(f"hub:{s}: say which ControlNet to fetch (canny, inpainting or sr)")
        return _from_hub(s, names[0])
    raise WeightsError(f"ControlNet weights not found: {p} does not exist (and is not a hub id owner/name)")


# ------------------------------------------------------------------------------------------- config


def _shape(shapes: Mapping[str, list], key: str) -> list | None:
    s = shapes.get(key)
    return [int(d) for d in s] if s is not None else None


def config_from_shapes(shapes: Mapping[str, list], proj_blocks: list[int] | None = None,
                       where: str = "the file") -> ControlNetConfig:
    """The ControlNet config of a state dict, from its key shapes (module docstring); WeightsError if it is none."""
    first_effnet, first = _shape(shapes, "backbone.0.0.weight"), _shape(shapes, "backbone.0.weight")
    proj = _shape(shapes, "projections.0.2.weight")
    n_proj = sum(1 for k in shapes if k.startswith("projections.") and k.endswith(".2.weight"))
    if proj is None or (first_effnet is None and first is None):
        sample = ", ".join(sorted(shapes)[:6]) or "(no keys)"
        raise WeightsError(f"{where} is not a Stable Cascade ControlNet (no backbone.0 / projections.0.2 weights); "
                           f"first keys: {sample}")
    kw: dict = {"c_proj": proj[0]}
    if first_effnet is not None:
        kw.update(c_in=first_effnet[1], bottleneck_mode="effnet")
    elif "backbone.3.blocks.0.weight" in shapes:
        widths = [first[0], _shape(shapes, "backbone.2.weight")[0], _shape(shapes, "backbone.11.weight")[0]]
        kw.update(c_in=first[1], bottleneck_mode="large", large_widths=widths)
    else:
        kw.update(c_in=first[1], bottleneck_mode="simple")
    if proj_blocks is None:
        if n_proj != len(OFFICIAL_PROJ_BLOCKS):
            raise WeightsError(f"{where} has {n_proj} projections but no proj_blocks metadata; pass proj_blocks= "
                               f"(the official files have {len(OFFICIAL_PROJ_BLOCKS)}: {list(OFFICIAL_PROJ_BLOCKS)})")
        proj_blocks = list(OFFICIAL_PROJ_BLOCKS)
    if len(proj_blocks) != n_proj:
        raise WeightsError(f"{where} has {n_proj} projections but proj_blocks lists {len(proj_blocks)}: {proj_blocks}")
    return ControlNetConfig(proj_blocks=list(proj_blocks), **kw)


def _metadata_proj_blocks(path: Path) -> list[int] | None:
    if path.suffix != ".safetensors":
        return None
    meta = safetensors_header(path).get("__metadata__") or {}
    if "proj_blocks" not in meta:
        return None
    try:
        blocks = [int(b) for b in json.loads(meta["proj_blocks"])]
    except (TypeError, ValueError):
        raise WeightsError(f"{path}: its proj_blocks metadata {meta['proj_blocks']!r} is not a JSON list of ints") from None
    return blocks


def control_of(cfg: ControlNetConfig) -> str:
    """The control a ControlNet serves, from its input channels (1 canny, 4 inpainting, 16 sr)."""
    for name, (_, c_in) in CONTROLNET_FILES.items():
        if cfg.c_in == c_in:
            return name
    raise WeightsError(f"a ControlNet with {cfg.c_in} input channels serves none of the supported controls "
                       "(canny 1, inpainting 4, sr 16)")


# ------------------------------------------------------------------------------------------- loading


def read_controlnet_config(source: str | os.PathLike, control: str | None = None,
                           proj_blocks: list[int] | None = None) -> ControlNetInfo:
    """Find the ControlNet file and read its config from the header alone (no tensor is loaded for safetensors).

    control: the control wanted ('canny' | 'inpainting' | 'sr'); a file serving another one is a WeightsError.
    proj_blocks: override the ResBlock-call slots (default: file metadata, else the official list).
    """
    wanted = control_name(control) if control else None
    path = resolve_controlnet(source, wanted)
    if path.suffix == ".safetensors":
        shapes = {k: v["shape"] for k, v in safetensors_header(path).items() if k != "__metadata__"}
    else:
        shapes = {k: list(v.shape) for k, v in read_state_dict(path).items()}
    cfg = config_from_shapes(shapes, proj_blocks if proj_blocks is not None else _metadata_proj_blocks(path), str(path))
    served = control_of(cfg)
    if wanted and served != wanted:
        raise WeightsError(f"{path} is a {served} ControlNet ({cfg.c_in} input channels), not a {wanted} one")
    return ControlNetInfo(path=path, control=served, config=cfg)


def load_controlnet(source: str | os.PathLike, control: str | None = None, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None,
                    proj_blocks: list[int] | None = None) -> tuple[ControlNet, ControlNetInfo]:
    """``(ControlNet in eval mode, info)`` from a file / folder / hub id, built on the meta device
    (arguments as :func:`read_controlnet_config`)."""
    info = read_controlnet_config(source, control, proj_blocks)
    state = read_state_dict(info.path)
    if dtype is not None:  # converted one tensor at a time: never two full copies
        for k, v in state.items():
            if v.is_floating_point() and v.dtype != dtype:
                state[k] = v.to(dtype)
    model = build(lambda: ControlNet.from_config(info.config), state, device=device, dtype=dtype,
                  name=f"ControlNet ({info.path})")
    return model.eval().requires_grad_(False), info


def check_fits_stage_c(controlnet: ControlNet | ControlNetConfig, stage_c: nn.Module,
                       where: str = "the ControlNet") -> None:
    """WeightsError unless every projection slot is a ResBlock call of ``stage_c`` with ``c_proj`` channels.

    controlnet: the module or its config (``c_proj``, ``proj_blocks``); stage_c may live on the meta device.
    """
    channels = resblock_call_channels(stage_c)
    c_proj, slots = controlnet.c_proj, controlnet.proj_blocks
    hint = " (the official ControlNets are for the 3.6B Stage C: use stage_c='big' / --stage-c big)" if c_proj == 2048 else ""
    wrong = sorted({channels[s] for s in slots if s < len(channels)} - {c_proj})
    if wrong:
        raise WeightsError(f"{where} projects to {c_proj} channels but this Stage C's ResBlocks have {wrong}: "
                           f"it was made for another Stage C{hint}")
    beyond = [s for s in slots if s >= len(channels)]
    if beyond:
        raise WeightsError(f"{where} feeds ResBlock calls {beyond} but this Stage C has only {len(channels)}: "
                           f"it was made for another (larger) Stage C{hint}")
