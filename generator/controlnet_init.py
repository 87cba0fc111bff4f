"""How a new ControlNet starts: its projection slots for a Stage C, and the start of its effnet backbone.

* :func:`resolve_blocks`: ``controlnet_blocks: auto`` = the official [0,4,8,12,51,55,59,63] for the 3.6B Stage C,
  scaled to another Stage C's ResBlock-call count (:func:`scaled_proj_blocks`), keeping the slots whose width is
  the widest among them (one ``c_proj`` per ControlNet: lite and 3.6B have one width, the tiny test model two).
* :func:`init_backbone`: the official ControlNet starts its EfficientNetV2-S backbone from torchvision's ImageNet
  weights: cascadekit uses them when they are in torch's hub cache or can be downloaded into it
  (:mod:`cascadekit.generator.controlnet_imagenet`: short timeouts, never offline, hash-checked), else the Stable
  Cascade EfficientNet encoder's backbone (the image encoder given, or ``effnet_encoder.safetensors`` of the Stage C
  weights folder); the run log says which, and why not ImageNet.
"""
from __future__ import annotations

from typing import Any

import torch

from cascadekit.codec.errors import InputError
from cascadekit.codec.models.controlnet import ControlNet, init_effnet_backbone, scaled_proj_blocks
from cascadekit.generator.controlnet_imagenet import ImageNetWeights, imagenet_features


def resolve_blocks(blocks: Any, channels: list[int]) -> tuple[list[int], int]:
    """``(proj_blocks, c_proj)`` for a Stage C with ResBlock-call ``channels`` (``blocks``: "auto" or a list)."""
    if blocks == "auto":
        scaled = scaled_proj_blocks(len(channels))
        c_proj = max(channels[s] for s in scaled)
        return [s for s in scaled if channels[s] == c_proj], c_proj
    blocks = [int(b) for b in blocks]
    beyond = [b for b in blocks if b >= len(channels)]
    if beyond:
        raise InputError(f"controlnet_blocks {beyond} are beyond this Stage C's {len(channels)} ResBlock calls")
    return blocks, channels[blocks[0]]


def stable_cascade_features(image_encoder: Any, init: str | None) -> tuple[dict[str, torch.Tensor], str] | None:
    """The Stable Cascade EfficientNet encoder's backbone weights and where they came from, or None."""
    effnet = getattr(image_encoder, "effnet", None)
    if isinstance(effnet, torch.nn.Module):
        return {k: v.detach().float().cpu() for k, v in effnet.backbone.state_dict().items()}, "the image encoder"
    if init is None:
        return None
    from cascadekit.codec.errors import WeightsError
    from cascadekit.codec.weights.load import load_weights
    from cascadekit.codec.weights.sources import resolve_source

    try:
        path = resolve_source(str(init), need=("effnet",)).path("effnet")
    except WeightsError:
        return None
    state = load_weights(path, dtype=torch.float32, kind="effnet")
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}, str(path)


def init_backbone(net: ControlNet, mode: str, image_encoder: Any = None, init: str | None = None,
                  imagenet: ImageNetWeights | None = None) -> str:
    """Start ``net``'s effnet backbone (``mode``: auto | imagenet | stable_cascade | random); returns what it did
    (for the run log). imagenet: where torchvision's weights come from (default: torchvision's own file)."""
    if net.bottleneck_mode != "effnet":
        return f"{net.bottleneck_mode} bottleneck, random start (official init)"
    if mode == "random":
        return "effnet backbone, random start (backbone_init: random)"
    why_not = "not asked for (backbone_init: stable_cascade)"
    if mode in ("auto", "imagenet"):
        features, where = imagenet_features(imagenet)
        if features is not None:
            init_effnet_backbone(net, features)
            return f"effnet backbone from torchvision's ImageNet EfficientNetV2-S weights ({where}), as the official"
        if mode == "imagenet":
            raise InputError(f"backbone_init: imagenet, but torchvision's EfficientNetV2-S ImageNet weights: {where}")
        why_not = where
    found = stable_cascade_features(image_encoder, init)
    if found is None:
        raise InputError(f"no start for the ControlNet's EfficientNet backbone: torchvision's ImageNet weights: "
                         f"{why_not}; and no Stable Cascade EfficientNet encoder was given (pass --init with a weights "
                         "folder holding effnet_encoder.safetensors, or --image-encoder), or set backbone_init: random")
    init_effnet_backbone(net, found[0])
    return (f"effnet backbone from the Stable Cascade EfficientNet encoder's backbone ({found[1]}), not from "
            f"ImageNet (torchvision's ImageNet EfficientNetV2-S weights: {why_not})")


__all__ = ["init_backbone", "resolve_blocks", "stable_cascade_features"]
