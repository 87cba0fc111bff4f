"""The Generate tab's job: one :class:`GenerateRequest` -> the pipeline call `cascadekit sample` makes -> PNGs with
the same embedded parameters (``PipelineOutput.save``, i.e. ``generator.outputs.write_pngs``)."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cascadekit.cli.app_choices import stage_c_choices
from cascadekit.cli.app_jobs import AppConfig, Job, Models, read_upload, step_monitor
from cascadekit.codec.errors import InputError
from cascadekit.generator.control_sampling import ControlSettings

SIZES = tuple(range(64, 2049, 64))  # pixel sides offered (multiples of 64; Stage C latents: ceil(side / 42.67))
SAMPLERS = ("ddpm", "ddim", "lcm")
CONTROLS = ("none", "canny", "inpainting", "sr")


@dataclass
class GenerateRequest:
    """One Generate click. Images are upload paths (read through the guarded loader); mask: (H,W) bool array
    (True = repaint) drawn on the control image; run: a Stage C choice of the launch's --run (``LABEL`` or
    ``LABEL (ema)``, :func:`~cascadekit.cli.app_choices.stage_c_choices`); lora: uploaded .safetensors."""

    prompt: str
    negative: str = ""
    height: int = 1024
    width: int = 1024
    n: int = 1
    seed: int | None = None
    steps: int = 20
    guidance: float = 4.0
    shift: float = 2.0
    decoder_steps: int = 10
    decoder_guidance: float = 1.1
    sampler: str = "ddpm"
    variation_image: str | None = None
    init_image: str | None = None
    strength: float = 0.8
    run: str | None = None
    lora: list[str] = field(default_factory=list)
    lora_tokens: str = ""
    controlnet: str | None = None
    control_image: str | None = None
    mask: np.ndarray | None = None
    control_strength: float = 1.0

    def check(self, config: AppConfig, controlnets: dict[str, Path]) -> None:
        """Argument errors before any model is touched (InputError naming the field)."""
        if not 32 <= self.height <= 4096 or not 32 <= self.width <= 4096:
            raise InputError(f"size {self.width}x{self.height}: each side must be in 32..4096 pixels")
        if self.height * self.width > config.max_pixels:
            raise InputError(f"size {self.width}x{self.height} is above the pixel budget of {config.max_pixels:,}")
        if not 1 <= self.n <= 8 or self.steps < 1 or self.decoder_steps < 1:
            raise InputError("images per prompt must be 1..8 and the step counts >= 1")
        if self.sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InputError(f"seed must be in 0 <= seed < 2**63, got {self.seed}")
        runs = stage_c_choices(config.runs) if self.run is not None else {}
        if self.run is not None and self.run not in runs:
            raise InputError(f"unknown training run {self.run!r}; the app was started with {sorted(runs)}")
        if self.controlnet is not None and self.controlnet not in controlnets:
            raise InputError(f"unknown ControlNet {self.controlnet!r}; the app was started with {sorted(controlnets)}")
        if self.controlnet is not None and self.control_image is None:
            raise InputError("a ControlNet needs a control image")
        if not 0 < self.strength <= 1:
            raise InputError(f"strength must be in (0, 1], got {self.strength}")
        if any(Path(p).suffix != ".safetensors" for p in self.lora):
            raise InputError("LoRA files must be .safetensors")


def parse_tokens(text: str) -> list | None:
    """'[fernando]=^dog</w>, [x]' -> [["[fernando]", "^dog</w>"], ["[x]", None]] (None for an empty text)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    out = []
    for t in items:
        token, sep, init = t.partition("=")
        if not token.strip():
            raise InputError(f"LoRA token {t!r}: expected TOKEN or TOKEN=INIT_REGEX")
        out.append([token.strip(), init.strip() if sep else None])
    return out or None


def _control(req: GenerateRequest, config: AppConfig, kind: str) -> ControlSettings:
    image = read_upload(req.control_image, config, "control image")
    mask = None
    if kind == "inpainting":
        if req.mask is None or not req.mask.any():
            raise InputError("inpainting needs a mask: paint the area to repaint on the control image")
        m = torch.from_numpy(np.asarray(req.mask, bool))[None, None]
        if tuple(m.shape[-2:]) != (image.height, image.width):
            m = torch.nn.functional.interpolate(m.float(), size=(image.height, image.width), mode="nearest") > 0.5
        mask = m
    return ControlSettings(kind, image, mask=mask, strength=req.control_strength)


def generate(req: GenerateRequest, models: Models, config: AppConfig, job: Job, controlnets: dict[str, Path],
             report: Callable[[str, int, int], None] | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Run ``req``: {"files": PNG paths (parameters embedded), "control": control-image PNG paths, "parameters":
    the first image's parameter dict}. Raises InputError (bad request), JobCancelled (cancelled)."""
    req.check(config, controlnets)
    variation = read_upload(req.variation_image, config, "variation image")
    init = read_upload(req.init_image, config, "init image")
    lora_tokens = parse_tokens(req.lora_tokens)
    run = stage_c_choices(config.runs)[req.run] if req.run is not None else None
    pipe = models.pipeline(run and run.path, req.lora, lora_tokens, ema=bool(run and run.ema))
    control = None
    if req.controlnet is not None:
        pipe.load_controlnet(controlnets[req.controlnet])
        control = _control(req, config, pipe.controlnet_info.control)
    else:
        pipe.controlnet = pipe.controlnet_info = None
    n_imgs = req.n
    strength = req.strength if (init is not None or (control is not None and control.control == "inpainting")) else 1.0
    steps_c = max(1, int(req.steps * strength)) if strength < 1 else req.steps
    stages = {"Stage C": (pipe.stage_c, steps_c), "Stage B": (pipe.codec.stage_b, req.decoder_steps)}
    job.start()
    with step_monitor(stages, job, report):
        res = pipe(req.prompt, negative_prompt=req.negative or None, height=req.height, width=req.width,
                   num_images_per_prompt=n_imgs, seed=req.seed, prior_steps=req.steps, prior_guidance=req.guidance,
                   prior_shift=req.shift, prior_sampler=req.sampler, decoder_steps=req.decoder_steps,
                   decoder_guidance=req.decoder_guidance, image=variation, init_image=init, strength=strength,
                   control=control)
    out = Path(out_dir or tempfile.mkdtemp(prefix="generate-", dir=config.work_dir))
    files = res.save(out)
    controls = sorted(out.glob("*_control.png"))
    return {"files": files, "control": controls, "parameters": res.parameters[0]}
