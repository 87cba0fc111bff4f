"""Translate diffusers model configs (``config.json``) into the official constructor kwargs.

``StableCascadeUNet`` -> :class:`~cascadekit.codec.models.stage_b.StageB` / ``StageC`` kwargs;
``PaellaVQModel`` -> :class:`~cascadekit.codec.models.stage_a.StageA` kwargs.
"""
from __future__ import annotations

from cascadekit.codec.errors import WeightsError

DIFFUSERS_VQGAN_SCALE = 0.3764  # PaellaVQModel config default, applied by the pipeline


def unet_kwargs_from_diffusers(cfg: dict, component: str) -> dict:
    """Translate a diffusers ``StableCascadeUNet`` config into official StageB/StageC constructor kwargs."""
    letters = {"SDCascadeResBlock": "C", "SDCascadeTimestepBlock": "T", "SDCascadeAttnBlock": "A"}
    try:
        kw = {
            "c_in": cfg["in_channels"],
            "c_out": cfg["out_channels"],
            "c_r": cfg.get("timestep_ratio_embedding_dim", 64),
            "patch_size": cfg["patch_size"],
            "c_cond": cfg["conditioning_dim"],
            "c_hidden": list(cfg["block_out_channels"]),
            "nhead": [h if h else -1 for h in cfg["num_attention_heads"]],
            "blocks": [list(cfg["down_num_layers_per_block"]), list(cfg["up_num_layers_per_block"])],
            "block_repeat": [list(cfg["down_blocks_repeat_mappers"]), list(cfg["up_blocks_repeat_mappers"])],
            "level_config": ["".join(letters[b] for b in types) for types in cfg["block_types_per_layer"]],
            "c_clip_seq": cfg.get("clip_seq", 4),
            "kernel_size": cfg.get("kernel_size", 3),
            "dropout": _per_level(cfg.get("dropout", 0.0), len(cfg["block_out_channels"])),
            "self_attn": _uniform_self_attn(cfg.get("self_attn", True)),
            "t_conds": list(cfg.get("timestep_conditioning_type", ["sca"])),
        }
        if component == "stage_b":
            kw.update(c_clip=cfg["clip_text_pooled_in_channels"], c_effnet=cfg["effnet_in_channels"],
                      c_pixels=cfg["pixel_mapper_in_channels"])
        else:
            kw.update(c_clip_text=cfg["clip_text_in_channels"], c_clip_text_pooled=cfg["clip_text_pooled_in_channels"],
                      c_clip_img=cfg["clip_image_in_channels"], switch_level=cfg.get("switch_level") or [False])
    except KeyError as e:
        raise WeightsError(f"diffusers UNet config lacks {e}; is it a Stable Cascade prior/decoder config?") from None
    return kw


def _per_level(value, levels: int) -> list:
    """diffusers allows one dropout for every level (a number) or one per level (a list)."""
    if isinstance(value, (int, float)):
        return [value] * levels
    return list(value)


def _uniform_self_attn(value) -> bool:
    """diffusers allows ``self_attn`` per level; the official networks have one flag for all levels."""
    if isinstance(value, bool):
        return value
    flags = set(bool(v) for v in value)
    if len(flags) != 1:
        raise WeightsError(f"diffusers UNet config has self_attn={list(value)} per level; the official "
                           "Stage B/C networks support only one value for every level")
    return flags.pop()


def vqgan_kwargs_from_diffusers(cfg: dict) -> dict:
    """Translate a diffusers ``PaellaVQModel`` config into official StageA kwargs (scale_factor as configured)."""
    return {
        "levels": cfg.get("levels", 2),
        "bottleneck_blocks": cfg.get("bottleneck_blocks", 12),
        "c_hidden": cfg.get("embed_dim", 384),
        "c_latent": cfg.get("latent_channels", 4),
        "codebook_size": cfg.get("num_vq_embeddings", 8192),
        "scale_factor": float(cfg.get("scale_factor", DIFFUSERS_VQGAN_SCALE)),
    }


__all__ = ["DIFFUSERS_VQGAN_SCALE", "unet_kwargs_from_diffusers", "vqgan_kwargs_from_diffusers"]
