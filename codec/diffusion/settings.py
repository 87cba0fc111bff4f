"""SamplingSettings: the settings of one sampling run, grouped (steps, guidance, schedule window, sampler).

The defaults are those of :func:`~cascadekit.codec.diffusion.samplers.sample` and are written only here;
callers with other defaults (``Codec.decode``: the official Stage B notebook settings) derive theirs with
:meth:`SamplingSettings.replace`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cascadekit.codec.errors import InputError

SAMPLERS = ("ddpm", "ddim", "lcm")


@dataclass(frozen=True)
class SamplingSettings:
    """How a sampler walks from noise to a sample.

    steps: number of steps (>= 1); the t grid is ``linspace(t_start, t_end, steps + 1)``, 1 >= t_start >=
        t_end >= 0 (t_start < 1: image-to-image from a diffused start).
    cfg: classifier-free guidance scale (a pair = linear in t from t=1 to t=0), None = no guidance.
    cfg_rho: std-rescale strength of the guided prediction, in [0, 1].
    shift: logSNR schedule shift (official: Stage C 2, Stage B 1).
    sampler: one of :data:`SAMPLERS`; eta overrides the DDIM (0) / DDPM (1) eta (None: the sampler's own).
    cfg_t_stop / cfg_t_start: guide only while ``cfg_t_stop <= t <= cfg_t_start`` (None: no bound).
    """

    steps: int = 20
    cfg: float | tuple[float, float] | None = 3.0
    cfg_rho: float = 0.7
    shift: float = 1.0
    sampler: str = "ddpm"
    t_start: float = 1.0
    t_end: float = 0.0
    eta: float | None = None
    cfg_t_stop: float | None = None
    cfg_t_start: float | None = None

    def replace(self, **changes: Any) -> "SamplingSettings":
        """A copy with ``changes`` applied; an unknown name is an :class:`InputError` listing the known ones."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise InputError(f"unknown sampling setting(s) {', '.join(unknown)}; the settings are {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Every field, as a fresh dict (JSON-able unless ``cfg`` is a tuple, which becomes a list in JSON)."""
        return dataclasses.asdict(self)


#: The field names of :class:`SamplingSettings`, in order.
FIELDS = tuple(f.name for f in dataclasses.fields(SamplingSettings))


def resolve_settings(settings: SamplingSettings | None, overrides: dict[str, Any]) -> SamplingSettings:
    """``settings`` (default :class:`SamplingSettings`\\ ()) with the keyword ``overrides`` applied on top."""
    if settings is not None and not isinstance(settings, SamplingSettings):
        raise InputError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
    return (settings or SamplingSettings()).replace(**overrides)


__all__ = ["FIELDS", "SAMPLERS", "SamplingSettings", "resolve_settings"]
