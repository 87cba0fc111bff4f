"""GDF: the diffusion setup of the released Stage B / Stage C, bundling the pure functions of this package.

Defaults = the official training and inference configuration (``train_b.py`` / ``train_c.py``):
``CosineSchedule(clamp_range=[0.0001, 0.9999])``, ``VPScaler``, ``EpsilonTarget``, ``CosineTNoiseCond``,
``P2LossWeight`` (or ``AdaptiveLossWeight`` with ``loss_weight='adaptive'``), no offset noise.

Training::

    gdf = GDF()
    d = gdf.diffuse(latents)                      # random t per sample
    pred = model(d.x_t, d.noise_cond, **conditions)
    loss = F.mse_loss(pred, d.target, reduction="none").mean(dim=[1, 2, 3])   # (B,)
    (loss * d.loss_weight).mean().backward()
    gdf.update_loss_weight(d.logsnr, loss)        # no-op unless loss_weight == "adaptive"

Sampling: ``gdf.sample(model, x_init, steps=20, cfg=4, shift=2, model_inputs=..., ...)`` or
``gdf.sample(model, x_init, SamplingSettings(steps=20, cfg=4, shift=2), model_inputs=...)`` (see
:func:`~cascadekit.codec.diffusion.samplers.sample`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

import torch

from cascadekit.codec.diffusion.loss_weights import AdaptiveLossWeight, p2_loss_weight
from cascadekit.codec.diffusion.noise_cond import cosine_t_noise_cond
from cascadekit.codec.diffusion.samplers import SampleStep, sample, sample_final
from cascadekit.codec.diffusion.settings import SamplingSettings
from cascadekit.codec.diffusion.schedule import CLAMP_RANGE, S, alpha_sigma, append_dims, cosine_logsnr, logsnr_limits
from cascadekit.codec.diffusion.targets import check_target, make_target, pred_to_x0_eps
from cascadekit.codec.errors import InputError

LOSS_WEIGHTS = ("p2", "adaptive", "constant")


class Diffused(NamedTuple):
    """Result of :meth:`GDF.diffuse`, in the official order ``(noised, epsilon, target, logSNR, noise_cond, loss_weight)``.

    x_t, noise, target: shaped like x0 (B, ...); logsnr, noise_cond, loss_weight: (B,).
    """

    x_t: torch.Tensor
    noise: torch.Tensor
    target: torch.Tensor
    logsnr: torch.Tensor
    noise_cond: torch.Tensor
    loss_weight: torch.Tensor


@dataclass
class GDF:
    """Diffusion configuration: schedule constants, target kind, loss weighting.

    target: what the network predicts, 'epsilon' (released models) | 'v' | 'x0'.
    loss_weight: 'p2' (official default, ``(p2_k + exp(p2_s·λ))^−p2_gamma``) | 'adaptive' (official
        AdaptiveLossWeight; its state is ``self.adaptive``, checkpoint with :meth:`state_dict`) | 'constant' (1).
    s, clamp_range: cosine schedule offset and variance clamp. offset_noise: official offset-noise
        strength (0 = off), adds ``offset_noise · N(0, 1)`` per (sample, channel) to ε in :meth:`diffuse`.
    """

    target: str = "epsilon"
    loss_weight: str = "p2"
    s: float = S
    clamp_range: tuple[float, float] = CLAMP_RANGE
    p2_k: float = 1.0
    p2_gamma: float = 1.0
    p2_s: float = 1.0
    offset_noise: float = 0.0
    adaptive: AdaptiveLossWeight | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_target(self.target)
        if self.loss_weight not in LOSS_WEIGHTS:
            raise InputError(f"unknown loss weight {self.loss_weight!r}; choose one of {', '.join(LOSS_WEIGHTS)}")
        self.clamp_range = tuple(self.clamp_range)
        if self.loss_weight == "adaptive" and self.adaptive is None:
            self.adaptive = AdaptiveLossWeight()

    @classmethod
    def official(cls, adaptive_loss_weight: bool = False) -> "GDF":
        """The released models' setup (train_b.py / train_c.py); ``adaptive_loss_weight`` as their config flag."""
        return cls(loss_weight="adaptive" if adaptive_loss_weight else "p2")

    # ------------------------------------------------------------------ schedule pieces

    def schedule(self, t: torch.Tensor, shift: float = 1.0) -> torch.Tensor:
        """logSNR(t) (see :func:`~cascadekit.codec.diffusion.schedule.cosine_logsnr`)."""
        return cosine_logsnr(t, shift, s=self.s, clamp_range=self.clamp_range)

    @property
    def limits(self) -> tuple[float, float]:
        """(min, max) logSNR every schedule call is clamped to (computed with shift 1)."""
        return logsnr_limits(self.s, self.clamp_range)

    def noise_cond(self, logsnr: torch.Tensor) -> torch.Tensor:
        """The r in [0, 1] the networks receive (cosine-t noise condition)."""
        return cosine_t_noise_cond(logsnr, s=self.s)

    def scalers(self, logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) with x_t = a·x0 + b·ε."""
        return alpha_sigma(logsnr)

    def loss_weight_of(self, logsnr: torch.Tensor, shift: float = 1.0) -> torch.Tensor:
        """Per-sample loss weight (B,) for logSNR (B,); ``shift`` is the official ``loss_shift``."""
        if self.loss_weight == "p2":
            return p2_loss_weight(logsnr, k=self.p2_k, gamma=self.p2_gamma, s=self.p2_s, shift=shift)
        if self.loss_weight == "adaptive":
            return self.adaptive(logsnr, shift=shift)
        return torch.ones_like(logsnr)

    def update_loss_weight(self, logsnr: torch.Tensor, loss: torch.Tensor, beta: float = 0.99) -> None:
        """Feed the per-sample losses (B,) back into the adaptive weight (no-op for 'p2' / 'constant')."""
        if self.adaptive is not None and self.loss_weight == "adaptive":
            self.adaptive.update(logsnr, loss, beta)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable state (the adaptive buckets) as tensors; empty for 'p2' / 'constant'."""
        return {} if self.adaptive is None else {f"adaptive.{k}": v for k, v in self.adaptive.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` output."""
        sub = {k[len("adaptive."):]: v for k, v in state.items() if k.startswith("adaptive.")}
        if sub and self.adaptive is None:
            raise InputError("this state has adaptive loss-weight buckets but the GDF uses loss_weight="
                             f"{self.loss_weight!r}; build it with loss_weight='adaptive'")
        if self.adaptive is not None:
            if not sub:
                raise InputError("the GDF uses the adaptive loss weight but the state has no 'adaptive.*' buckets")
            self.adaptive.load_state_dict(sub)

    # ------------------------------------------------------------------ training

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random training times (B,) in [0.001, 1], as the official schedule draws them: ``1 − U[0,1) + 0.001``."""
        u = torch.rand(batch, generator=generator, device=generator.device if generator is not None else "cpu")
        return (1 - u).add(0.001).clamp(0.001, 1.0).cpu()

    def diffuse(
        self,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        shift: float = 1.0,
        loss_shift: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Diffused:
        """Noise clean x0 (B, ...) to times t (B,) (random when None): official ``GDF.diffuse``.

        noise: ε like x0 (drawn when None, from ``generator`` if given — drawn on its device, then moved).
        Returns :class:`Diffused` (x_t = a·x0 + b·ε, ε, target, logSNR, r, loss weight).
        """
        if noise is None:
            noise = (
                torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device, x0.dtype)
                if generator is not None
                else torch.randn_like(x0)
            )
        elif noise.shape != x0.shape:
            raise InputError(f"noise {tuple(noise.shape)} must have the shape of x0 {tuple(x0.shape)}")
        if self.offset_noise > 0:
            shape = (x0.size(0), x0.size(1)) + (1,) * (x0.dim() - 2)
            offset = torch.randn(shape, generator=generator, device=generator.device if generator is not None else "cpu")
            noise = noise + offset.to(x0.device, x0.dtype) * self.offset_noise
        if t is None:
            t = self.sample_t(x0.size(0), generator)
        logsnr = self.schedule(t, shift).to(x0.device)
        a, b = self.scalers(logsnr)
        target = make_target(self.target, x0, noise, a, b)
        a_, b_ = append_dims(a, x0.dim()), append_dims(b, x0.dim())
        x_t = x0 * a_ + noise * b_
        return Diffused(x_t, noise, target, logsnr, self.noise_cond(logsnr), self.loss_weight_of(logsnr, loss_shift))

    def undiffuse(
        self, x_t: torch.Tensor, logsnr: torch.Tensor, pred: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, ε) from a network prediction at x_t with logSNR (B,) (official ``GDF.undiffuse``)."""
        a, b = self.scalers(logsnr)
        return pred_to_x0_eps(self.target, x_t, pred, a, b)

    # ------------------------------------------------------------------ sampling

    def noised_start(
        self,
        x0: torch.Tensor,
        t_start: float,
        *,
        shift: float = 1.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_init for image-to-image: clean latents x0 (B, ...) diffused to ``t_start`` in [0, 1].

        The official notebooks diffuse with the default ``shift=1`` even when they then sample with
        shift 2 (Stage C), and run ``int(total_steps · t_start)`` steps from ``t_start``; this keeps that.
        """
        if not 0.0 <= t_start <= 1.0:
            raise InputError(f"t_start (noise level) must be in [0, 1], got {t_start!r}")
        t = torch.full((x0.size(0),), float(t_start), dtype=torch.float32)
        return self.diffuse(x0, t=t, noise=noise, shift=shift, generator=generator).x_t

    def sample(self, model: Callable[..., torch.Tensor], x_init: torch.Tensor | None,
               settings: SamplingSettings | None = None, **kwargs: Any) -> Iterator[SampleStep]:
        """:func:`~cascadekit.codec.diffusion.samplers.sample` with this GDF's schedule, noise condition and target.

        ``settings`` (a :class:`SamplingSettings`) and/or the sampling keywords, as for ``sample``.
        """
        return sample(model, x_init, settings, **self._sampling_kwargs(kwargs))

    def sample_final(self, model: Callable[..., torch.Tensor], x_init: torch.Tensor | None,
                     settings: SamplingSettings | None = None, **kwargs: Any) -> SampleStep:
        """Run :meth:`sample` to the end; returns the last step (``.x0`` is the sample)."""
        return sample_final(model, x_init, settings, **self._sampling_kwargs(kwargs))

    def _sampling_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("schedule", self.schedule)
        kwargs.setdefault("noise_cond", self.noise_cond)
        kwargs.setdefault("target", self.target)
        return kwargs


__all__ = ["GDF", "Diffused", "LOSS_WEIGHTS"]
