"""What every tab of `cascadekit app` shares: the launch settings, the models loaded once, uploads read through the
codec's guarded loader, and per-step progress with cooperative cancel.

The app runs one job at a time (Gradio's queue, concurrency 1), so a job owns the models while it runs. Progress
and cancel use torch forward pre-hooks on the denoising networks (one call per sampling step): each step reports
``(stage, step, total)`` and raises :class:`JobCancelled` once the job is cancelled, which frees the work at the
next step. Every job has its own :class:`Job`; :class:`Sessions` finds the jobs of one browser session, so a
Cancel stops that session's job only.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from cascadekit.cli.app_choices import WeightsChoice, decoder_choices
from cascadekit.codec.errors import CascadeKitError, InputError, WeightsError


class JobCancelled(CascadeKitError):
    """The user cancelled the running job."""


@dataclass(frozen=True)
class AppConfig:
    """Launch settings. weights: folder / hub id (None: defaults, tiny random when nothing is found); stores,
    runs, stage_b_weights: {label: path} the UI may pick from (nothing else is ever opened; runs: Stage C or
    Stage B training runs / checkpoints / Stage C files, stage_b_weights: fine-tuned Stage B runs / files, see
    ``app_choices``); device/dtype for every model; queue_size: waiting jobs before "busy"; max_upload_bytes /
    max_pixels: per uploaded image."""

    weights: str | None = None
    stores: dict[str, Path] = field(default_factory=dict)
    runs: dict[str, Path] = field(default_factory=dict)
    stage_b_weights: dict[str, Path] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "fp32"
    queue_size: int = 4
    max_upload_bytes: int = 20 << 20
    max_pixels: int = 4096 * 4096
    work_dir: Path = Path(".")


class Models:
    """The models of one app, loaded on first use and kept: the text-to-image pipeline (per Stage C weights),
    a codec per Stage B variant and per fine-tuned Stage B (the last two). ``tiny`` is True when the tiny
    random weights are in use."""

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
        self._tuned: dict[str, Any] = {}
        self._previewer = None

    def pipeline(self, stage_c_weights: Path | None = None, lora: list[str] | None = None, tokens=None,
                 ema: bool = False):
        """A TextToImagePipeline with these Stage C weights (their EMA with ``ema``) and LoRA files (the last
        two are kept)."""
        from cascadekit.generator.pipeline import TextToImagePipeline

        key = (str(stage_c_weights), ema, tuple(lora or ()), repr(tokens))
        if key not in self._pipes:
            if len(self._pipes) >= 2:
                self._pipes.pop(next(iter(self._pipes)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the page's banner says "tiny" once
                self._pipes[key] = TextToImagePipeline.from_pretrained(
                    self.source, device=self.config.device, dtype=self.config.dtype, stage_c_weights=stage_c_weights,
                    ema=ema, lora=lora or None, lora_tokens=tokens)
        return self._pipes[key]

    def codec(self, stage_b: str = "lite"):
        """The codec of the weights with their Stage B variant ``stage_b`` (lite / big)."""
        if stage_b not in self._codecs:
            self._codecs[stage_b] = self._load_codec(stage_b)
        return self._codecs[stage_b]

    def _load_codec(self, stage_b: str):
        from cascadekit.codec.codec import Codec

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Codec.from_pretrained(self.source, stage_b=stage_b, device=self.config.device,
                                         dtype=self.config.dtype)

    @functools.cached_property
    def decoders(self) -> dict[str, WeightsChoice]:
        """Reconstruct's decoder choices: ``app_choices.decoder_choices`` of the launch paths."""
        return decoder_choices(self.config.runs, self.config.stage_b_weights, self.stage_b_variants())

    def decoder(self, label: str):
        """The codec of decoder choice ``label``: a Stage B variant of the weights (:meth:`codec`), or a codec of
        the variant a fine-tuned Stage B fits holding those weights (its own codec; the base one is untouched)."""
        choice = self.decoders.get(label)
        if choice is None:
            raise InputError(f"unknown decoder {label!r}; the app was started with {sorted(self.decoders)}")
        if choice.path is None:
            return self.codec(choice.variant)
        if label not in self._tuned:
            if len(self._tuned) >= 2:
                self._tuned.pop(next(iter(self._tuned)))
            self._tuned[label] = self._fine_tuned(choice)
        return self._tuned[label]

    def _fine_tuned(self, choice: WeightsChoice):
        """A fresh codec holding the fine-tuned Stage B, of the first variant (the hinted one first) it fits."""
        from cascadekit.generator.stage_b_weights import use_stage_b_weights

        problems = []
        for variant in sorted(self.stage_b_variants(), key=lambda v: v != choice.variant):
            codec = self._load_codec(variant)
            try:
                use_stage_b_weights(codec, choice.path, choice.ema)
                return codec
            except WeightsError as e:
                problems.append(f"{variant}: {e}")
        raise WeightsError(f"{choice.path} fits no Stage B of the weights ({'; '.join(problems)})")

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
    """One job's cancel flag (a Job per job): ``cancel()`` (its session's Cancel button) stops it at its next
    sampling step. ``alive``: an optional check of the job's request (False once Gradio cancelled it or its client
    went away); a dead request cancels the job too."""

    def __init__(self, alive: Callable[[], bool] | None = None):
        self._flag = threading.Event()
        self.alive = alive

    def start(self) -> None:
        """Called when the work starts (after loading): JobCancelled if the job was cancelled meanwhile."""
        if self.cancelled:
            raise JobCancelled("cancelled")

    def cancel(self) -> None:
        self._flag.set()

    @property
    def cancelled(self) -> bool:
        return self._flag.is_set() or (self.alive is not None and not self.alive())


class Sessions:
    """The jobs of each client session (Gradio's session hash): :meth:`cancel` stops one session's jobs only.
    ``device``: held by the thread doing a job's work, so one job runs at a time even when a cancelled request
    is still finishing its current step after the queue moved on."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str | None, list[Job]] = {}
        self.device = threading.Lock()

    @contextlib.contextmanager
    def job(self, session: str | None, alive: Callable[[], bool] | None = None):
        """A new :class:`Job` of ``session`` for the duration of the block."""
        job = Job(alive)
        with self._lock:
            self._jobs.setdefault(session, []).append(job)
        try:
            yield job
        finally:
            with self._lock:
                jobs = self._jobs[session]
                jobs.remove(job)
                if not jobs:
                    del self._jobs[session]

    def cancel(self, session: str | None) -> int:
        """Cancel the running jobs of ``session``; how many there were."""
        with self._lock:
            jobs = list(self._jobs.get(session, ()))
        for job in jobs:
            job.cancel()
        return len(jobs)


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
