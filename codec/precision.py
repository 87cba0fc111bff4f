"""Precision: dtype parsing, the per-stage dtype policy of :class:`~cascadekit.codec.codec.Codec`, and
overflow detection.

Policy (:func:`stage_dtypes`), for the dtype a user asks for:

==============  =========  ==========  ===========================================  =========
requested       effnet     previewer   Stage B                                      Stage A
==============  =========  ==========  ===========================================  =========
float32         float32    float32     float32                                      float32
bfloat16        bfloat16   bfloat16    bfloat16                                     float32
float16         float16    float16     **bfloat16** (float32 where the device has   float32
                                       no bfloat16 support)
==============  =========  ==========  ===========================================  =========

Why:

* **Stage B never runs in float16.** The released Stage B/Stage C were trained and are run by the
  official scripts in bfloat16 (``train_b.py`` casts the generator with ``.to(dtype)`` and runs the
  forward under ``autocast(bfloat16)``); their residual stream and attention logits reach magnitudes
  beyond float16's 65504 (the known fp16 NaN/black-image failure of Stable Cascade, for which
  diffusers also recommends bfloat16). bfloat16 has float32's exponent range and the same memory
  as float16, so it is the honest substitute; a warning says so when it happens.
* **Stage A always runs in float32.** The official code decodes with ``stage_a.decode(latents.float())``
  even when the generator is bfloat16; it is small (18.4M parameters) and its decoder's last layers
  produce the pixels directly, so low precision shows up as banding.
* The effnet encoder and the previewer are small feed-forward convnets with BatchNorm; they follow
  the requested dtype.

On top of the policy every stage output is checked with :func:`check_finite`, which raises a
:class:`~cascadekit.codec.errors.PrecisionError` naming the stage and suggesting bf16/fp32 instead of
returning NaN images.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cascadekit.codec.errors import InputError, PrecisionError

__all__ = ["parse_dtype", "dtype_name", "check_finite", "StageDtypes", "stage_dtypes", "bf16_supported"]

_ALIASES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "f32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "f16": torch.float16,
}

_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def parse_dtype(value: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """``'fp32'|'float32'|'bf16'|'bfloat16'|'fp16'|'float16'`` (any case, ``torch.`` prefix allowed) or a
    ``torch.dtype`` -> one of float32 / bfloat16 / float16. ``None`` gives ``default``.

    Raises :class:`InputError` for anything else (e.g. integer dtypes or float64).
    """
    if value is None:
        return default
    if isinstance(value, torch.dtype):
        if value not in _NAMES:
            raise InputError(f"unsupported dtype {value}; use float32, bfloat16 or float16")
        return value
    if isinstance(value, str):
        key = value.strip().lower().removeprefix("torch.")
        if key in _ALIASES:
            return _ALIASES[key]
    raise InputError(f"unknown dtype {value!r}; use one of fp32/float32, bf16/bfloat16, fp16/float16")


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> ``'float32'`` (also bfloat16 / float16; other dtypes: ``str(dtype)``)."""
    return _NAMES.get(dtype, str(dtype).removeprefix("torch."))


def bf16_supported(device: str | torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions/matmuls (CPU: yes; CUDA: compute capability >= 8)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return device.type in ("cpu", "mps", "xpu")


@dataclass(frozen=True)
class StageDtypes:
    """The dtype each Codec stage runs in (see the module docstring for the policy)."""

    requested: torch.dtype
    effnet: torch.dtype
    previewer: torch.dtype
    stage_b: torch.dtype
    stage_a: torch.dtype

    def as_dict(self) -> dict[str, str]:
        return {k: dtype_name(getattr(self, k)) for k in ("requested", "effnet", "previewer", "stage_b", "stage_a")}


def stage_dtypes(requested: str | torch.dtype, device: str | torch.device = "cpu") -> StageDtypes:
    """The per-stage dtypes :class:`Codec` uses when ``requested`` is asked for on ``device``."""
    dt = parse_dtype(requested)
    stage_b = dt
    if dt == torch.float16:
        stage_b = torch.bfloat16 if bf16_supported(device) else torch.float32
    return StageDtypes(requested=dt, effnet=dt, previewer=dt, stage_b=stage_b, stage_a=torch.float32)


def check_finite(t: torch.Tensor, where: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``t`` unchanged if every value is finite, else raise :class:`PrecisionError`.

    ``where`` names the stage (e.g. ``"Stage B sampling step 3/10"``); ``dtype`` is the dtype that
    stage ran in (defaults to ``t.dtype``) and decides the advice given.
    """
    if not t.is_floating_point():
        return t
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return t
    dtype = dtype or t.dtype
    n_nan = int(torch.isnan(t).sum())
    n_inf = int(torch.isinf(t).sum())
    what = f"{where} produced {n_nan} NaN and {n_inf} inf value(s) out of {t.numel()} in {dtype_name(dtype)}"
    if dtype == torch.float16:
        advice = (
            "float16 overflowed (its largest value is 65504). Use dtype='bf16' (same memory, float32 range) "
            "or dtype='fp32'."
        )
    elif dtype == torch.bfloat16:
        advice = "Try dtype='fp32'; if that also fails, the weights or the inputs are broken."
    else:
        advice = "This happens in float32 only with broken weights or inputs; check the checkpoint (sha256) and inputs."
    raise PrecisionError(f"{what}. {advice}")
