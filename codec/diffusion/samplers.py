"""DDPM / DDIM / LCM steps and the sampling loop (the official ``GDF.sample``).

A step maps the current state x at logSNR λ to the state at the next (less noisy) λ_prev, given the
model's x0 and ε estimates. The loop calls ``model(x, r, **inputs)`` once per step (on ``[cond; uncond]``
along the batch when classifier-free guidance is on) and yields ``(x0, x, pred)`` after each step.

Random draws: every step draws one Gaussian like x (DDIM with eta 0 draws it too and multiplies it by
0, so the random stream is the same for every sampler). The draws come from, in order of preference,
a pre-drawn list (``noise=[...]``, exact reproduction of stored runs), a ``torch.Generator`` (drawn on
the generator's device — CPU by default — then moved, so a seed gives the same sample on every device),
or the global RNG (``torch.randn_like``, the official behaviour).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import torch

from cascadekit.codec.diffusion.guidance import cfg as apply_cfg
from cascadekit.codec.diffusion.guidance import cfg_scale_at
from cascadekit.codec.diffusion.noise_cond import cosine_t_noise_cond
from cascadekit.codec.diffusion.schedule import alpha_sigma, append_dims, cosine_logsnr, timesteps
from cascadekit.codec.diffusion.settings import SAMPLERS, SamplingSettings, resolve_settings
from cascadekit.codec.diffusion.targets import check_target, pred_to_x0_eps
from cascadekit.codec.errors import InputError

__all__ = ["SAMPLERS", "SampleStep", "SamplingSettings", "ddim_step", "ddpm_step", "get_step", "guided_inputs",
           "lcm_step", "randn", "sample", "sample_final"]


class SampleStep(NamedTuple):
    """One yield of :func:`sample`; unpacks like the official ``(x0, x, pred)``.

    x0: the model's clean estimate at this step (the notebooks keep the **last step's x0** as the sample);
    x: the sampler state after the step; pred: the (guided) network prediction. All shaped like x.
    """

    x0: torch.Tensor
    x: torch.Tensor
    pred: torch.Tensor


# ---------------------------------------------------------------------------------------- steps


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    logsnr: torch.Tensor,
    logsnr_prev: torch.Tensor,
    noise: torch.Tensor,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM step (official ``DDIMSampler``; eta = 1 is DDPM).

    ``x = a_prev·x0 + sqrt(b_prev² − σ²)·ε + σ·noise`` with
    ``σ = eta·sqrt(b_prev²/b²)·sqrt(1 − a²/a_prev²)``. x0, eps, noise: (B, ...); logsnr, logsnr_prev:
    (B,) or scalars. eta 0 → σ = 0 (deterministic; noise is multiplied by 0).
    """
    a, b = alpha_sigma(logsnr)
    a_prev, b_prev = alpha_sigma(logsnr_prev)
    a, b = append_dims(a, x0.dim()), append_dims(b, x0.dim())
    a_prev, b_prev = append_dims(a_prev, x0.dim()), append_dims(b_prev, x0.dim())
    sigma = eta * (b_prev**2 / b**2).sqrt() * (1 - a**2 / a_prev**2).sqrt() if eta > 0 else 0
    # clamp: b_prev² − σ² ≥ 0 mathematically; keeps float rounding from turning it into NaN
    return a_prev * x0 + (b_prev**2 - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise


def ddpm_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    logsnr: torch.Tensor,
    logsnr_prev: torch.Tensor,
    noise: torch.Tensor,
    eta: float = 1.0,
) -> torch.Tensor:
    """DDPM step = :func:`ddim_step` with eta 1 (official ``DDPMSampler``); adds noise at every step, the last too."""
    return ddim_step(x0, eps, logsnr, logsnr_prev, noise, eta)


def lcm_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    logsnr: torch.Tensor,
    logsnr_prev: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """LCM step (official ``LCMSampler``): re-noise the x0 estimate to the next level, ``a_prev·x0 + b_prev·noise``.

    ε and logsnr are unused (kept for a uniform signature). The sample is the last step's x0.
    """
    a_prev, b_prev = alpha_sigma(logsnr_prev)
    a_prev, b_prev = append_dims(a_prev, x0.dim()), append_dims(b_prev, x0.dim())
    return x0 * a_prev + noise * b_prev


def get_step(sampler: str, eta: float | None = None) -> Callable[..., torch.Tensor]:
    """The step function for 'ddpm' | 'ddim' | 'lcm' (eta overrides the DDIM/DDPM default 0 / 1)."""
    if sampler == "ddpm":
        e = 1.0 if eta is None else eta
        return lambda x0, eps, l, lp, n: ddim_step(x0, eps, l, lp, n, e)
    if sampler == "ddim":
        e = 0.0 if eta is None else eta
        return lambda x0, eps, l, lp, n: ddim_step(x0, eps, l, lp, n, e)
    if sampler == "lcm":
        if eta is not None:
            raise InputError("the LCM sampler has no eta; leave it unset")
        return lcm_step
    raise InputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


# ----------------------------------------------------------------------------------- noise & inputs


class _Noise:
    """Per-step Gaussian draws from a pre-drawn list, a generator, or the global RNG."""

    def __init__(self, noise: Sequence[torch.Tensor] | None, generator: torch.Generator | None, steps: int):
        if noise is not None and generator is not None:
            raise InputError("pass either pre-drawn `noise` or a `generator`, not both")
        if noise is not None and len(noise) < steps:
            raise InputError(f"got {len(noise)} pre-drawn noise tensors for {steps} steps; one per step is needed")
        self.noise, self.generator = noise, generator

    def draw(self, i: int, like: torch.Tensor) -> torch.Tensor:
        if self.noise is not None:
            n = self.noise[i]
            if tuple(n.shape) != tuple(like.shape):
                raise InputError(f"pre-drawn noise {i} has shape {tuple(n.shape)}, expected {tuple(like.shape)}")
            return n.to(like.device, like.dtype)
        if self.generator is not None:
            return randn(like.shape, self.generator).to(like.device, like.dtype)
        return torch.randn_like(like)


def randn(shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal draws on the generator's own device (CPU generators: device-independent results)."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)


def _cat_pair(key: str, v: Any, v_u: Any) -> Any:
    if isinstance(v, torch.Tensor):
        if not isinstance(v_u, torch.Tensor) or v_u.shape[1:] != v.shape[1:]:
            got = tuple(v_u.shape) if isinstance(v_u, torch.Tensor) else type(v_u).__name__
            raise InputError(f"unconditional input {key!r} is {got}, must match the conditional {tuple(v.shape)}")
        return torch.cat([v, v_u.to(v.device, v.dtype)], dim=0)
    if isinstance(v, list):
        return _cat_list(key, v, v_u)
    if isinstance(v, dict):
        return {vk: torch.cat([v[vk], v_u.get(vk, torch.zeros_like(v[vk]))], dim=0) for vk in v}
    return v  # non-tensor settings are passed through unchanged


def _cat_list(key: str, v: list, v_u: Any) -> list:
    """Element-wise pairing of a list input (the ControlNet list): equal lengths, a tensor paired with a
    tensor of the same per-sample shape, ``None`` with ``None``; anything else is an :class:`InputError`."""
    if not isinstance(v_u, list) or len(v_u) != len(v):
        got = f"a list of {len(v_u)}" if isinstance(v_u, list) else type(v_u).__name__
        raise InputError(f"unconditional input {key!r} is {got}, must be a list of {len(v)} like the conditional")
    out = []
    for i, (vi, vi_u) in enumerate(zip(v, v_u)):
        if vi is None and vi_u is None:
            out.append(None)
        elif isinstance(vi, torch.Tensor) and isinstance(vi_u, torch.Tensor) and vi.shape[1:] == vi_u.shape[1:]:
            out.append(torch.cat([vi, vi_u.to(vi.device, vi.dtype)], dim=0))
        else:
            desc = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in (vi, vi_u)]
            raise InputError(f"{key}[{i}] is {desc[0]} in the conditional but {desc[1]} in the unconditional "
                             "input; both must be None or tensors of the same per-sample shape")
    return out


def _zeros_like_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    def z(v):
        if isinstance(v, torch.Tensor):
            return torch.zeros_like(v)
        if isinstance(v, list):
            return [torch.zeros_like(vi) if isinstance(vi, torch.Tensor) else vi for vi in v]
        if isinstance(v, dict):
            return {k: z(vv) for k, vv in v.items()}
        return v

    return {k: z(v) for k, v in inputs.items()}


def guided_inputs(model_inputs: Mapping[str, Any], unconditional_inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``[cond; uncond]`` concatenated along the batch for every model input.

    As in the official ``GDF.sample``, conditional and unconditional inputs are paired by dict
    **order**; to keep that from silently mixing inputs, both dicts must list the same keys in the same
    order. ``unconditional_inputs=None`` means zeros for everything (official fallback; the released
    pipelines use empty-caption embeddings instead).
    """
    if unconditional_inputs is None:
        unconditional_inputs = _zeros_like_inputs(model_inputs)
    keys, keys_u = list(model_inputs), list(unconditional_inputs)
    if keys != keys_u:
        raise InputError(
            f"conditional and unconditional inputs are paired by order and must have the same keys in the "
            f"same order; got {keys} and {keys_u}"
        )
    return {k: _cat_pair(k, v, v_u) for (k, v), (_, v_u) in zip(model_inputs.items(), unconditional_inputs.items())}


# ------------------------------------------------------------------------------------------- loop


# over 60 lines: the docstring documents every setting and both call forms; the code is ~40 lines
def sample(
    model: Callable[..., torch.Tensor],
    x_init: torch.Tensor | None,
    settings: SamplingSettings | None = None,
    *,
    model_inputs: Mapping[str, Any] | None = None,
    unconditional_inputs: Mapping[str, Any] | None = None,
    noise: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    target: str = "epsilon",
    shape: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    schedule: Callable[[torch.Tensor, float], torch.Tensor] = cosine_logsnr,
    noise_cond: Callable[[torch.Tensor], torch.Tensor] = cosine_t_noise_cond,
    callback: Callable[[int, int, SampleStep], None] | None = None,
    **sampling: Any,
) -> Iterator[SampleStep]:
    """Run a sampler, yielding a :class:`SampleStep` ``(x0, x, pred)`` after each of the ``steps`` steps.

    The sampling settings come grouped or as keywords (both forms are equivalent and may be mixed)::

        sample(model, x, SamplingSettings(steps=10, cfg=1.1), model_inputs=...)
        sample(model, x, steps=10, cfg=1.1, model_inputs=...)          # keywords override ``settings``

    settings: a :class:`~cascadekit.codec.diffusion.settings.SamplingSettings` (default: its defaults,
        20 DDPM steps, cfg 3, cfg_rho 0.7, shift 1, t 1 -> 0); ``**sampling``: any of its fields by name
        (``steps``, ``cfg``, ``cfg_rho``, ``shift``, ``sampler``, ``t_start``, ``t_end``, ``eta``,
        ``cfg_t_stop``, ``cfg_t_start``), applied on top of ``settings``; another name is an InputError.
        What they mean: the t grid ``linspace(t_start, t_end, steps + 1)`` and the schedule shift
        (official notebooks: Stage C 20 steps shift 2, Stage B 10 steps shift 1); cfg = guidance scale (a
        pair = linear in t from t=1 to t=0), ``None`` disables guidance (one model call on the conditional
        inputs per step); cfg_rho: std-rescale strength (see :func:`guidance.cfg`); guidance only while
        ``cfg_t_stop <= t <= cfg_t_start``; sampler 'ddpm' (official), 'ddim' or 'lcm', eta overrides the
        DDIM/DDPM eta.
    model: ``model(x, r, **inputs) -> pred`` with x (N, C, H, W), r (N,) in [0, 1] (the noise condition),
        pred shaped like x (ε for the released models, see ``target``).
    x_init: (B, C, H, W) start state at t_start — pure noise for t_start = 1, or the caller's diffused
        latents for image-to-image (t_start < 1). ``None``: drawn from ``generator`` (or the global RNG)
        with ``shape``, ``device``, ``dtype``.
    model_inputs / unconditional_inputs: keyword inputs of the model, paired by order (see
        :func:`guided_inputs`); ``unconditional_inputs=None`` = zeros.
    noise / generator: where the per-step Gaussian draws come from (module docstring). ``seed``: shorthand
        for ``generator=torch.Generator('cpu').manual_seed(seed)`` (also draws ``x_init`` when it is None).
    schedule / noise_cond: logSNR(t, shift) and r(logSNR); defaults are the official cosine pair. The
        logSNR and r tables are computed on CPU in float32 and then moved, so r does not depend on the
        device the model runs on.
    callback: called as ``callback(i, steps, step)`` after each step (progress bars).

    Arguments are checked when ``sample`` is called (bad input raises ``InputError`` at once); the
    model runs lazily, one step per iteration.
    """
    st = resolve_settings(settings, sampling)
    check_target(target)
    if seed is not None:
        if generator is not None:
            raise InputError("give either seed or generator, not both")
        generator = torch.Generator("cpu").manual_seed(int(seed))
    step_fn = get_step(st.sampler, st.eta)
    t_grid = timesteps(st.steps, st.t_start, st.t_end)  # (steps+1,) CPU float32
    logsnr_grid = schedule(t_grid, st.shift)  # (steps+1,)
    r_grid = noise_cond(logsnr_grid)  # (steps+1,)
    draws = _Noise(noise, generator, st.steps)
    model_inputs = dict(model_inputs or {})
    joint_inputs = None
    if st.cfg is not None:
        cfg_scale_at(st.cfg, 1.0)  # validates a pair
        joint_inputs = guided_inputs(model_inputs, unconditional_inputs)
    if x_init is None:
        x = _initial_noise(shape, generator, device, dtype)
    else:
        x = x_init.clone()
    # validation above runs at call time; the loop below runs lazily, one step per next()
    grids = (t_grid, logsnr_grid, r_grid)
    return _loop(model, x, grids, draws, step_fn, target, st, model_inputs, joint_inputs, callback)


def _initial_noise(shape, generator, device, dtype) -> torch.Tensor:
    if shape is None:
        raise InputError("give x_init or the shape (B, C, H, W) of the initial noise")
    if generator is not None:
        return randn(shape, generator).to(device or "cpu", dtype)
    return torch.randn(tuple(shape), dtype=dtype).to(device or "cpu")


def _guided_at(st: SamplingSettings, t: float) -> bool:
    return (st.cfg is not None and (st.cfg_t_stop is None or t >= st.cfg_t_stop)
            and (st.cfg_t_start is None or t <= st.cfg_t_start))


def _loop(model, x, grids, draws, step_fn, target, st: SamplingSettings, model_inputs, joint_inputs,
          callback) -> Iterator[SampleStep]:
    t_grid, logsnr_grid, r_grid = grids
    steps = len(t_grid) - 1
    batch = x.size(0)
    for i in range(steps):
        t_i = float(t_grid[i])
        logsnr = logsnr_grid[i].expand(batch).to(x.device)  # (B,)
        logsnr_prev = logsnr_grid[i + 1].expand(batch).to(x.device)  # (B,)
        r = r_grid[i].expand(batch).to(x.device)  # (B,)
        if _guided_at(st, t_i):
            out = model(torch.cat([x, x], dim=0), r.repeat(2), **joint_inputs)
            _check_pred(out, 2 * batch, x)
            pred_c, pred_u = out.chunk(2)
            pred = apply_cfg(pred_c, pred_u, cfg_scale_at(st.cfg, t_i), st.cfg_rho)
        else:
            pred = model(x, r, **model_inputs)
            _check_pred(pred, batch, x)
        a, b = alpha_sigma(logsnr)
        x0, eps = pred_to_x0_eps(target, x, pred, a, b)
        x = step_fn(x0, eps, logsnr, logsnr_prev, draws.draw(i, x0))
        result = SampleStep(x0, x, pred)
        if callback is not None:
            callback(i, steps, result)
        yield result


def _check_pred(pred: Any, n: int, x: torch.Tensor) -> None:
    if not isinstance(pred, torch.Tensor) or pred.shape[0] != n or pred.shape[1:] != x.shape[1:]:
        got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise InputError(f"the model returned {got}; expected a prediction of shape {(n, *x.shape[1:])}")


def sample_final(model: Callable[..., torch.Tensor], x_init: torch.Tensor | None,
                 settings: SamplingSettings | None = None, **kwargs: Any) -> SampleStep:
    """Run :func:`sample` to the end and return its last :class:`SampleStep` (``.x0`` is the sample)."""
    last = None
    for last in sample(model, x_init, settings, **kwargs):
        pass
    assert last is not None  # steps >= 1 is checked by timesteps()
    return last
