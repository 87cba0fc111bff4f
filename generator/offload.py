"""Accelerator memory offload for the text-to-image pipeline (as diffusers' model / sequential CPU offload).

Every network lives on ``home`` (the CPU) and visits the accelerator only while it runs:

- ``"model"``: a whole stage (text encoder, Stage C, the decoder = Stage B + Stage A + the text encoder it
  uses for pooled captions, the EfficientNet for init/control images, the CLIP image encoder) is moved to the
  accelerator when the pipeline enters it and back when it leaves, so the peak is the largest stage, not the sum.
- ``"sequential"``: each submodule that owns parameters is moved to the accelerator just before its own forward
  and back right after it (forward hooks), so the peak is about one layer plus activations — much slower.
- ``"none"``: nothing moves (everything stays on the pipeline's device).

``move(module, device, recurse)`` does every move; the default :func:`move_module` is ``module.to(device)``
(``recurse=False``: only the module's own parameters and buffers). Tests pass a recording ``move`` to check
the placement calls, since on a CPU-only machine moving is a no-op.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from cascadekit.codec.errors import InputError

MODES = ("none", "model", "sequential")
Move = Callable[[nn.Module, torch.device, bool], None]


def move_module(module: nn.Module, device: torch.device, recurse: bool = True) -> None:
    """``module.to(device)``; with ``recurse=False`` only the module's own parameters and buffers move."""
    if recurse:
        module.to(device)
        return
    for p in module.parameters(recurse=False):
        p.data = p.data.to(device)
    for name, b in module.named_buffers(recurse=False):
        module._buffers[name] = b.to(device)  # noqa: SLF001 - nn.Module has no public non-recursive buffer move


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"offload must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def retarget(obj: Any, device: torch.device) -> None:
    """Point a wrapper (Codec, TextEncoder, ImageEncoder) at ``device`` for its inputs: its ``device``
    attribute and the plain tensors it holds (e.g. a cached empty-caption embedding) move; its networks do not."""
    obj.device = device
    for name, value in list(vars(obj).items()):
        if isinstance(value, torch.Tensor):
            setattr(obj, name, value.to(device))


class Offload:
    """Moves named groups of networks between ``home`` and ``device`` (see the module docstring).

    add(name, *modules) registers a stage; ``with offload.stage(name):`` runs it on the accelerator.
    """

    def __init__(self, mode: str = "none", device: str | torch.device = "cpu", home: str | torch.device = "cpu",
                 move: Move = move_module):
        self.mode = check_mode(mode)
        self.device = torch.device(device)
        self.home = torch.device(home)
        self.move = move
        self.groups: dict[str, list[nn.Module]] = {}
        self._hooks: list[Any] = []
        self._hooked: set[int] = set()  # ids of roots already hooked (a network may serve two stages)

    def add(self, name: str, *modules: nn.Module | None) -> None:
        """Register the networks of stage ``name`` (None entries are ignored); they are sent home now."""
        mods = [m for m in modules if m is not None]
        self.groups[name] = self.groups.get(name, []) + mods
        if self.mode == "none":
            return
        for m in mods:
            self.move(m, self.home, True)
        if self.mode == "sequential":
            for m in mods:
                if id(m) not in self._hooked:
                    self._hooked.add(id(m))
                    self._hook_layers(m)

    def _hook_layers(self, root: nn.Module) -> None:
        """Forward hooks on every submodule owning parameters or buffers: to the accelerator before, home after."""
        for m in root.modules():
            if next(m.parameters(recurse=False), None) is None and next(m.buffers(recurse=False), None) is None:
                continue
            self._hooks.append(m.register_forward_pre_hook(lambda mod, args: self.move(mod, self.device, False)))
            self._hooks.append(m.register_forward_hook(lambda mod, args, out: self.move(mod, self.home, False)))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run stage ``name``: under ``"model"`` its networks are on the accelerator inside the block."""
        mods = self.groups.get(name, [])
        if self.mode != "model" or not mods:
            yield
            return
        for m in mods:
            self.move(m, self.device, True)
        try:
            yield
        finally:
            for m in mods:
                self.move(m, self.home, True)

    def remove(self) -> None:
        """Take the sequential hooks off again."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._hooked.clear()


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes allocated on a CUDA ``device`` since the last reset, else None."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated(device))
