"""Official Stage B / Stage C constructor kwargs -> a diffusers ``StableCascadeUNet`` ``config.json``.

The inverse of :func:`cascadekit.codec.weights.diffusers_config.unet_kwargs_from_diffusers`; the values follow
the configs of ``stabilityai/stable-cascade`` ``prior/`` and ``decoder/`` (official ``nhead`` -1 is diffusers 0,
Stage B has no CLIP text / image input and ``switch_level`` null). :func:`diffusers_unet_config` checks the
round trip, so a config that diffusers could not express is an error instead of a silently different network.
"""
from __future__ import annotations

from cascadekit.codec.errors import WeightsError
from cascadekit.codec.weights.diffusers_config import unet_kwargs_from_diffusers

BLOCK_TYPES = {"C": "SDCascadeResBlock", "T": "SDCascadeTimestepBlock", "A": "SDCascadeAttnBlock"}
CLASS_NAME = "StableCascadeUNet"
DIFFUSERS_VERSION = "0.27.0"  # the release that added StableCascadeUNet; newer versions read this config


def diffusers_unet_config(kwargs: dict, component: str) -> dict:
    """The ``config.json`` dict for a ``component`` (``'stage_b'`` | ``'stage_c'``) built with official ``kwargs``
    (``StageBConfig`` / ``StageCConfig`` fields). Raises :class:`WeightsError` when diffusers cannot express it."""
    if component not in ("stage_b", "stage_c"):
        raise ValueError(f"component must be 'stage_b' or 'stage_c', got {component!r}")
    cfg = {
        "_class_name": CLASS_NAME,
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": kwargs["c_in"],
        "out_channels": kwargs["c_out"],
        "timestep_ratio_embedding_dim": kwargs["c_r"],
        "patch_size": kwargs["patch_size"],
        "conditioning_dim": kwargs["c_cond"],
        "block_out_channels": list(kwargs["c_hidden"]),
        "num_attention_heads": [h if h > 0 else 0 for h in kwargs["nhead"]],
        "down_num_layers_per_block": list(kwargs["blocks"][0]),
        "up_num_layers_per_block": list(kwargs["blocks"][1]),
        "down_blocks_repeat_mappers": list(kwargs["block_repeat"][0]),
        "up_blocks_repeat_mappers": list(kwargs["block_repeat"][1]),
        "block_types_per_layer": [[BLOCK_TYPES[c] for c in level] for level in kwargs["level_config"]],
        "clip_seq": kwargs["c_clip_seq"],
        "kernel_size": kwargs["kernel_size"],
        "dropout": list(kwargs["dropout"]),
        "self_attn": bool(kwargs["self_attn"]),
        "timestep_conditioning_type": list(kwargs["t_conds"]),
    }
    if component == "stage_b":
        cfg.update(clip_text_in_channels=None, clip_text_pooled_in_channels=kwargs["c_clip"],
                   clip_image_in_channels=None, effnet_in_channels=kwargs["c_effnet"],
                   pixel_mapper_in_channels=kwargs["c_pixels"], switch_level=None)
    else:
        cfg.update(clip_text_in_channels=kwargs["c_clip_text"], clip_text_pooled_in_channels=kwargs["c_clip_text_pooled"],
                   clip_image_in_channels=kwargs["c_clip_img"], effnet_in_channels=None,
                   pixel_mapper_in_channels=None, switch_level=list(kwargs["switch_level"]))
    _check_round_trip(cfg, kwargs, component)
    return cfg


def _check_round_trip(cfg: dict, kwargs: dict, component: str) -> None:
    back = unet_kwargs_from_diffusers(cfg, component)
    differ = sorted(k for k in kwargs if _plain(back.get(k)) != _plain(kwargs[k]))
    if differ:
        raise WeightsError(f"this {component} cannot be written as a diffusers StableCascadeUNet config: "
                           f"{', '.join(differ)} would change ({[kwargs[k] for k in differ]})")


def _plain(value):
    """Tuples and lists compare equal (nested); everything else as is."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


__all__ = ["diffusers_unet_config"]
