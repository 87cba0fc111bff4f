"""The Reconstruct tab's job: uploaded images through one or two decoders -> original | reconstruction | error
heat-map grids (``metrics.report.grid_image``) and PSNR / SSIM (LPIPS when its backbone is present) per decoder."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from cascadekit.cli.app_jobs import AppConfig, Job, Models, read_upload, step_monitor
from cascadekit.codec.errors import InputError
from cascadekit.codec.images import center_crop, pil_to_tensor, resize_short_side
from cascadekit.metrics import report as metrics_report
from cascadekit.metrics.errors import MetricsError
from cascadekit.metrics.pixel import psnr_per_image, ssim_per_image

MAX_IMAGES = 8


@dataclass(frozen=True)
class Decoder:
    """One decoder of the comparison: a decoder choice of the launch (``Models.decoders``: a Stage B variant of the
    weights, e.g. ``lite``, or a fine-tuned Stage B run / file, e.g. ``run2`` or ``run2 (ema)``) and its sampling
    steps / guidance."""

    stage_b: str = "lite"
    steps: int = 10
    guidance: float = 1.1

    @property
    def label(self) -> str:
        return f"Stage B {self.stage_b}, {self.steps} steps, cfg {self.guidance:g}"


def prepare(image, size: int) -> torch.Tensor:
    """PIL image -> (3,H,W) in [0,1]: short side ``size``, centre-cropped to multiples of 64."""
    img = resize_short_side(image, size)
    h, w = img.height // 64 * 64, img.width // 64 * 64
    if (h, w) != (img.height, img.width):
        img = center_crop(img, (h, w))
    return pil_to_tensor(img)


def _lpips(device):
    """An LPIPS metric when its backbone file is present locally, else None (never downloaded here)."""
    try:
        from cascadekit.metrics.lpips_metric import LPIPSMetric

        return LPIPSMetric("alex", device=device)
    except MetricsError:
        return None


def reconstruct(paths: list[str], decoders: list[Decoder], models: Models, config: AppConfig, job: Job, *,
                size: int = 512, seed: int = 0, report: Callable[[str, int, int], None] | None = None,
                out_dir: Path | None = None) -> tuple[list[tuple[Path, str]], list[list]]:
    """Reconstruct each uploaded image with each decoder: ([(grid PNG, caption)], table rows
    [file, decoder, psnr, ssim, lpips|None])."""
    if not paths:
        raise InputError("drop one or more images to reconstruct")
    if len(paths) > MAX_IMAGES or not 1 <= len(decoders) <= 2 or not 64 <= size <= 2048:
        raise InputError(f"at most {MAX_IMAGES} images, one or two decoders, size 64..2048")
    for dec in decoders:
        if dec.stage_b not in models.decoders:
            raise InputError(f"unknown decoder {dec.stage_b!r}; the app was started with {sorted(models.decoders)}")
    images = [(Path(p).name, prepare(read_upload(p, config), size)) for p in paths]  # all checked first
    out = Path(out_dir or tempfile.mkdtemp(prefix="reconstruct-", dir=config.work_dir))
    lpips, grids, rows = _lpips(config.device), [], []
    job.start()
    for i, (name, x) in enumerate(images):
        for j, dec in enumerate(decoders):
            codec = models.decoder(dec.stage_b)
            with step_monitor({f"{name} · decoder {j + 1}": (codec.stage_b, dec.steps)}, job, report):
                rec = codec.reconstruct(x[None], seed=seed, steps=dec.steps, guidance=dec.guidance).float().cpu()
            rec = rec.clamp(0, 1)
            scores = [float(psnr_per_image(rec, x[None])[0]), float(ssim_per_image(rec, x[None])[0]),
                      float(lpips(rec, x[None])[0]) if lpips is not None else None]
            path = out / f"{i:02d}_{j}.png"
            metrics_report.grid_image(x, rec[0]).save(path)
            grids.append((path, f"{name} · {dec.label}: PSNR {scores[0]:.2f} SSIM {scores[1]:.3f}"))
            rows.append([name, dec.label, *scores])
    return grids, rows
