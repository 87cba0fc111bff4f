"""The diffusion maths shared by Stage B and Stage C (schedules, targets, guidance, samplers).

k-diffusion style: small pure functions (each module one idea) plus :class:`GDF`, a dataclass bundling
them with the official Stable Cascade defaults. All numerics follow the official ``gdf`` package in
float32 (see ``schedule.py`` / ``noise_cond.py`` for why the exact float32 expressions matter).
"""
from cascadekit.codec.diffusion.gdf import GDF, LOSS_WEIGHTS, Diffused
from cascadekit.codec.diffusion.guidance import cfg, cfg_scale_at
from cascadekit.codec.diffusion.loss_weights import AdaptiveLossWeight, p2_loss_weight
from cascadekit.codec.diffusion.noise_cond import cosine_t_noise_cond
from cascadekit.codec.diffusion.samplers import (
    SAMPLERS,
    SampleStep,
    ddim_step,
    ddpm_step,
    get_step,
    guided_inputs,
    lcm_step,
    randn,
    sample,
    sample_final,
)
from cascadekit.codec.diffusion.schedule import (
    CLAMP_RANGE,
    S,
    alpha_sigma,
    append_dims,
    cosine_logsnr,
    cosine_logsnr_raw,
    cosine_min_var,
    logsnr_limits,
    timesteps,
)
from cascadekit.codec.diffusion.settings import SamplingSettings
from cascadekit.codec.diffusion.targets import (
    TARGETS,
    eps_from_v,
    eps_from_x0,
    make_target,
    pred_to_x0_eps,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)

__all__ = [
    "GDF", "LOSS_WEIGHTS", "Diffused",
    "cfg", "cfg_scale_at",
    "AdaptiveLossWeight", "p2_loss_weight",
    "cosine_t_noise_cond",
    "SAMPLERS", "SampleStep", "ddim_step", "ddpm_step", "get_step", "guided_inputs", "lcm_step", "randn",
    "sample", "sample_final", "SamplingSettings",
    "CLAMP_RANGE", "S", "alpha_sigma", "append_dims", "cosine_logsnr", "cosine_logsnr_raw", "cosine_min_var",
    "logsnr_limits", "timesteps",
    "TARGETS", "eps_from_v", "eps_from_x0", "make_target", "pred_to_x0_eps", "v_from_x0_eps", "x0_from_eps",
    "x0_from_v",
]
