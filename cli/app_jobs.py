"""What every tab of `cascadekit app` shares: the launch settings, the models loaded once, uploads read through the
codec's guarded loader, and per-step progress with cooperative cancel.

The app runs one job at a time (Gradio's queue, concurrency 1), so a job owns the models while it runs. Progress
and cancel use torch forward pre-hooks on the denoising networks (one call per sampling step): each step reports
``(stage, step, total)`` and raises :class:`JobCancelled` once the job's cancel flag is set, which frees the work
at the next step.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from cascadekit.codec.errors import CascadeKitError, InputError


class JobCancelled(CascadeKitError):
    """The user cancelled the running job."""


@dataclass(frozen=True)
class AppConfig:
    """Launch settings. weights: folder / hub id (None: defaults, tiny random when nothing is found); stores,
    runs: {label: path} the UI may pick from (nothing else is ever opened); device/dtype for every model;
    queue_size: waiting jobs before "busy"; max_upload_bytes / max_pixels: per uploaded image."""

    weights: str | None = None
    stores: dict[str, Path] = field(default_factory=dict)
    runs: dict[str, Path] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "fp32"
    queue_size: int = 4
    max_upload_bytes: int = 20 << 20
    max_pixels: int = 4096 * 4096
    work_dir: Path = Path(".")


class Models:
    """The models of one app, loaded on first use and kept: the text-to-image pipeline (per Stage C weights)
    and a codec per Stage B variant. ``tiny`` is True when the tiny random weights are in use."""

    def __init__(self, config: AppConfig):
        from cascadekit.cli.common import pick_weights

        from cascadekit.codec.weights.sources import resolve_source

        self.config = config
        self.source, _, tiny = pick_weights(config.weights, announce=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.tiny = tiny or bool(resolve_source(self.source, need=()).tiny)  # --weights may be tiny too
        self._pipes: dict[Any, Any] = {}
        self._codecs: dict[str, Any] = {}
        self._previewer = None

    def pipeline(self, stage_c_weights: Path | None = None, lora: list[str] | None = None, tokens=None):
        """A TextToImagePipeline with these Stage C weights and LoRA files (the last few are kept)."""
        from cascadekit.generator.pipeline import TextToImagePipeline

        key = (str(stage_c_weights), tuple(lora or ()), repr(tokens))
        if key not in self._pipes:
            if len(self._pipes) >= 2:
                self._pipes.pop(next(iter(self._pipes)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the page's banner says "tiny" once
                self._pipes[key] = TextToImagePipeline.from_pretrained(
                    self.source, device=self.config.device, dtype=self.config.dtype, stage_c_weights=stage_c_weights,
                    lora=lora or None, lora_tokens=tokens)
        return self._pipes[key]

    def codec(self, stage_b: str = "lite"):
        from cascadekit.codec.codec import Codec

        if stage_b not in self._codecs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._codecs[stage_b] = Codec.from_pretrained(self.source, stage_b=stage_b, device=self.config.device,
                                                              dtype=self.config.dtype)
        return self._codecs[stage_b]

    def previewer(self):
        from cascadekit.codec.codec import Codec

        if self._previewer is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._previewer = Codec.from_pretrained(self.source, components=("previewer",),
                                                        device=self.config.device)
        return self._previewer

    def stage_b_variants(self) -> list[str]:
        """The Stage B variants (lite / big) the weights hold."""
        from cascadekit.codec.weights.sources import resolve_source

        found = []
        for v in ("lite", "big"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    resolve_source(self.source, stage_b=v, need=("stage_b",))
                found.append(v)
            except CascadeKitError:
                pass
        return found or ["lite"]


def read_upload(path: str | None, config: AppConfig, what: str = "image"):
    """An uploaded file -> RGB PIL image through the codec's guarded loader (byte cap, pixel cap / bomb guard);
    InputError with a readable reason otherwise. None stays None."""
    from cascadekit.codec.images import load_image

    if path is None:
        return None
    name = Path(path).name
    try:
        return load_image(path, max_pixels=config.max_pixels, max_bytes=config.max_upload_bytes)
    except CascadeKitError as e:
        raise InputError(f"the uploaded {what} {name} cannot be used: {e}") from None


class Job:
    """The running job's cancel flag (one job at a time); ``cancel()`` is called by the Cancel button.
    ``alive``: an optional check set by the caller for the job's request (False once it was cancelled or its
    client went away); a dead request cancels the job too."""

    def __init__(self):
        self._flag = threading.Event()
        self.alive: Callable[[], bool] | None = None

    def start(self) -> None:
        self._flag.clear()

    def cancel(self) -> None:
        self._flag.set()

    @property
    def cancelled(self) -> bool:
        return self._flag.is_set() or (self.alive is not None and not self.alive())


@contextlib.contextmanager
def step_monitor(stages: dict[str, tuple[torch.nn.Module, int]], job: Job,
                 report: Callable[[str, int, int], None] | None = None):
    """Count the forward calls of each stage's network (one per sampling step): ``report(stage, i, total)``
    after each; :class:`JobCancelled` at the next step once ``job`` is cancelled. stages: {name: (module, total)}."""
    counts = dict.fromkeys(stages, 0)
    handles = []
    for name, (module, total) in stages.items():
        def hook(_module, _args, name=name, total=total):
            if job.cancelled:
                raise JobCancelled("cancelled")
            counts[name] += 1
            if report is not None:
                report(name, min(counts[name], total), total)
        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()
