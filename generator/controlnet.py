"""The ControlNet as the generator's public name.

The network lives beside the other official networks in :mod:`cascadekit.codec.models.controlnet`;
its official files load through :mod:`cascadekit.codec.weights.controlnet`.
"""
from cascadekit.codec.models.controlnet import (
    ControlNet,
    ControlNetConfig,
    init_effnet_backbone,
    resblock_call_channels,
    scaled_proj_blocks,
)

__all__ = ["ControlNet", "ControlNetConfig", "init_effnet_backbone", "resblock_call_channels", "scaled_proj_blocks"]
