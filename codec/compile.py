"""``torch.compile`` for the networks (Stage B / Stage C / EfficientNet / Stage A) with a check against eager on first use.

:func:`compile_checked` returns a :class:`CheckedCompile`: a callable that runs the compiled network, and
on its first call also runs the eager network on the same inputs and compares the outputs (a
:class:`PrecisionError` when they differ beyond the dtype's tolerance). The network itself is not
changed: its ``state_dict()`` keeps the official keys (no ``_orig_mod.`` prefix), and saving, EMA and
optimizers keep working on ``CheckedCompile.module``.

:func:`compile_codec` does this for the networks of a ``Codec`` in place (``encode --compile``,
``reconstruct --compile``).

When compilation itself fails (no C compiler, an unsupported torch build), the wrapper warns once and
runs eager: ``--compile`` is a speed option and never stops a job that eager can do.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from cascadekit.codec.errors import InputError, PrecisionError

# (atol, rtol) of the first-use check per working dtype: fp32 kernels may reorder sums (~1e-6 relative
# on a deep network); half-precision kernels may round fused intermediates once less or once more.
TOLERANCES = {torch.float32: (1e-3, 1e-3), torch.bfloat16: (6e-2, 5e-2), torch.float16: (2e-2, 2e-2)}


@dataclass
class CompileSettings:
    """How to compile: ``mode`` / ``dynamic`` / ``backend`` as for ``torch.compile``; ``check`` compares
    the first call with eager; ``fullgraph`` fails on graph breaks instead of splitting."""

    mode: str | None = None
    dynamic: bool | None = None
    backend: Any = "inductor"
    fullgraph: bool = False
    check: bool = True


def _flat_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a nested output (a tensor, or tuples / lists / dicts of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat_tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat_tensors(v)]
    return []


def compare_outputs(got: Any, ref: Any, name: str) -> float:
    """Largest |got - ref| over all output tensors; PrecisionError when any exceeds the dtype tolerance."""
    g, r = _flat_tensors(got), _flat_tensors(ref)
    if len(g) != len(r):
        raise PrecisionError(f"{name}: compiled network returned {len(g)} tensors, eager {len(r)}")
    worst = 0.0
    for a, b in zip(g, r):
        atol, rtol = TOLERANCES.get(b.dtype, TOLERANCES[torch.float32])
        a, b = a.detach().float(), b.detach().float()
        if a.shape != b.shape:
            raise PrecisionError(f"{name}: compiled output shape {tuple(a.shape)} != eager {tuple(b.shape)}")
        diff = (a - b).abs()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        bad = ~(diff <= atol + rtol * b.abs())  # NaN in either side counts as bad
        if bool(bad.any()):
            raise PrecisionError(
                f"{name}: torch.compile output differs from eager (max |diff| {worst:.3g}, tolerance "
                f"atol {atol:g} + rtol {rtol:g}·|x| for {str(b.dtype).removeprefix('torch.')}); "
                "run without --compile, or report the torch version"
            )
    return worst


class CheckedCompile:
    """A compiled network, checked against eager on its first call. ``module`` is the eager network;
    ``method`` compiles that method of it instead of ``forward`` (Stage A's ``encode`` / ``decode``).

    Call it like the network; ``checked_max_abs_diff`` holds the first-use difference (None before).
    The check runs in eval mode without grad (dropout off: a compiled graph draws other random numbers),
    so a training run compiles one extra graph on its first step.
    """

    def __init__(self, module: nn.Module, settings: CompileSettings | None = None, name: str | None = None,
                 method: str | None = None):
        self.module = module
        self.settings = settings or CompileSettings()
        self.name = name or type(module).__name__
        self.checked_max_abs_diff: float | None = None
        self._eager: Callable = module if method is None else getattr(module, method)
        self._compiled: Callable | None = torch.compile(
            self._eager, mode=self.settings.mode, dynamic=self.settings.dynamic, backend=self.settings.backend,
            fullgraph=self.settings.fullgraph,
        )
        self.fallback_reason: str | None = None
        self._first = True

    @property
    def compiled(self) -> bool:
        """False once compilation failed and calls run eager."""
        return self._compiled is not None

    def __getattr__(self, attr: str) -> Any:  # config attributes (c_r, dtype helpers, ...) of the network
        if attr in ("module", "_eager"):
            raise AttributeError(attr)
        return getattr(self.module, attr)

    def __call__(self, *args, **kwargs) -> Any:
        if self._compiled is not None and self._first:
            if self.settings.check:
                self._check(args, kwargs)
            else:
                return self._try_compiled(args, kwargs)
        fn = self._eager if self._compiled is None else self._compiled
        return fn(*args, **kwargs)

    def _check(self, args, kwargs) -> None:
        """Compiled vs eager on the same inputs, in eval mode (dropout off) and without grad."""
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                out = self._try_compiled(args, kwargs)
                ref = self._eager(*args, **kwargs)
        finally:
            self.module.train(was_training)
        if self._compiled is not None:
            self.checked_max_abs_diff = compare_outputs(out, ref, self.name)

    def _try_compiled(self, args, kwargs) -> Any:
        """The first compiled call; on a compiler failure warn and run eager from now on."""
        self._first = False
        try:
            return self._compiled(*args, **kwargs)
        except Exception as e:  # inductor / dynamo failures have no common base class
            self._compiled = None
            self.fallback_reason = _reason(e)
            warnings.warn(f"{self.name}: torch.compile failed ({self.fallback_reason}); running eager", stacklevel=4)
            return self._eager(*args, **kwargs)


def _reason(e: BaseException) -> str:
    """'Type: first line' of the innermost cause (dynamo wraps backend errors in BackendCompilerFailed)."""
    while e.__cause__ is not None or getattr(e, "inner_exception", None) is not None:
        e = e.__cause__ or e.inner_exception
    line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {line}"


def compile_checked(module: nn.Module, settings: CompileSettings | None = None, name: str | None = None) -> CheckedCompile:
    """Wrap ``module`` in a :class:`CheckedCompile` (compiles lazily on the first call)."""
    return CheckedCompile(module, settings, name)


class CheckedMethods:
    """A network whose ``methods`` run compiled, each a :class:`CheckedCompile`; every other attribute is
    the network's (``module``)."""

    def __init__(self, module: nn.Module, methods: tuple[str, ...], settings: CompileSettings | None = None,
                 name: str | None = None):
        self.module = module
        name = name or type(module).__name__
        self.compiled_methods = {m: CheckedCompile(module, settings, f"{name}.{m}", method=m) for m in methods}

    def __getattr__(self, attr: str) -> Any:
        if attr in ("module", "compiled_methods"):
            raise AttributeError(attr)
        return self.compiled_methods.get(attr) or getattr(self.module, attr)


#: the networks of a ``Codec`` that can be compiled: attribute -> methods compiled (None: ``forward``)
CODEC_PARTS = {"effnet": None, "stage_b": None, "stage_a": ("encode", "decode"), "previewer": None}


def compile_codec(codec: Any, parts: tuple[str, ...], settings: CompileSettings | None = None) -> dict:
    """Replace the networks ``parts`` of a ``cascadekit.codec.Codec`` (see :data:`CODEC_PARTS`) by checked
    compiled ones, in place (the codec calls them as before). Returns {part: wrapper}; InputError for a
    part the codec does not have."""
    out = {}
    for part in parts:
        if part not in CODEC_PARTS:
            raise InputError(f"cannot compile {part!r}: choose from {', '.join(CODEC_PARTS)}")
        module = unwrap(getattr(codec, part, None))
        if module is None:
            raise InputError(f"cannot compile {part}: this codec was loaded without it")
        methods, name = CODEC_PARTS[part], _PART_NAMES[part]
        out[part] = compile_checked(module, settings, name) if methods is None else CheckedMethods(
            module, methods, settings, name)
        setattr(codec, part, out[part])
    return out


_PART_NAMES = {"effnet": "EfficientNet encoder", "stage_b": "Stage B", "stage_a": "Stage A", "previewer": "Previewer"}


def unwrap(model: Any) -> Any:
    """The eager network behind a :class:`CheckedCompile` / :class:`CheckedMethods` (the object itself otherwise)."""
    return model.module if isinstance(model, (CheckedCompile, CheckedMethods)) else model
