"""Build a model on the meta device and assign loaded tensors to it.

No parameter is ever randomly initialised and no second copy of the weights is made: the module is
created on ``meta`` (shapes only), the state dict is checked against it, and the tensors are assigned
in place (converted to the requested device/dtype one tensor at a time).
"""
from __future__ import annotations

from typing import Callable, Mapping, TypeVar

import torch
from torch import nn

from cascadekit.codec.errors import WeightsError

M = TypeVar("M", bound=nn.Module)

OPTIONAL_SUFFIXES = (".num_batches_tracked",)


def _fmt(keys, limit=12) -> str:
    keys = sorted(keys)
    shown = "\n    ".join(keys[:limit])
    more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"\n    {shown}{more}"


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], name: str = "model") -> None:
    """Raise :class:`WeightsError` listing missing, unexpected and mis-shaped keys (readably).

    ``*.num_batches_tracked`` counters are optional (BatchNorm fills them in; they do not affect inference).
    """
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in want.keys() - got.keys() if not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = list(got.keys() - want.keys())
    wrong = [f"{k}: file {list(got[k])} vs model {list(want[k])}" for k in want.keys() & got.keys() if want[k] != got[k]]
    if missing or unexpected or wrong:
        parts = [f"the weights do not fit {name}:"]
        if missing:
            parts.append(f"  {len(missing)} missing key(s):{_fmt(missing)}")
        if unexpected:
            parts.append(f"  {len(unexpected)} unexpected key(s):{_fmt(unexpected)}")
        if wrong:
            parts.append(f"  {len(wrong)} mis-shaped key(s):{_fmt(wrong)}")
        parts.append("  Check that the file belongs to this model and preset (e.g. stage_b lite vs big).")
        raise WeightsError("\n".join(parts))


def load_into(
    model: M,
    state: Mapping[str, torch.Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    name: str | None = None,
) -> M:
    """Check ``state`` against ``model`` and assign its tensors (works for meta-device models).

    Floating-point tensors are cast to ``dtype`` when given; integer buffers (``num_batches_tracked``)
    stay int64. ``device`` defaults to the device of the first tensor in ``state``.
    Returns the model in eval mode.
    """
    name = name or type(model).__name__
    check_state_dict(model, state, name)
    own = model.state_dict()
    if device is None:
        device = next(iter(state.values())).device if state else "cpu"
    fixed = {}
    for key, ref in own.items():
        if key not in state:  # optional num_batches_tracked
            fixed[key] = torch.zeros((), dtype=torch.long, device=device)
            continue
        t = state[key]
        if not ref.is_floating_point():
            t = t.to(device=device, dtype=ref.dtype)
        elif dtype is not None:
            t = t.to(device=device, dtype=dtype)
        else:
            t = t.to(device=device)
        fixed[key] = t
    model.load_state_dict(fixed, strict=True, assign=True)
    return model.eval()


def build(
    factory: Callable[[], M],
    state: Mapping[str, torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    name: str | None = None,
) -> M:
    """Create ``factory()`` on the meta device, then :func:`load_into` it from ``state``.

    When ``state`` already has the target dtype/device (e.g. ``load_weights(path, dtype=...)``),
    its tensors are assigned as they are and peak memory is the state dict alone. Otherwise each
    tensor is converted here while the caller's ``state`` still holds the original, so the peak is
    state + converted model: convert while reading instead (``benchmarks/bench_load.py``).
    """
    with torch.device("meta"):
        model = factory()
    model = load_into(model, state, device=device, dtype=dtype, name=name)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise WeightsError(f"{name or type(model).__name__}: tensors left on the meta device: {_fmt(leftovers)}")
    return model
