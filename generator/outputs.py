"""Writing generated samples: one PNG per image (parameters in PNG metadata), ``grid.png`` and ``samples.json``.

The project standard for results people look at: the images themselves, a labelled grid of all of
them, and a JSON record next to them. :func:`write_samples` writes, into ``out_dir``::

    <prefix>_<seed>_<i>.png   one per image, generation parameters as PNG text chunks
    grid.png                  every image; one column per prompt (labelled "prompt · seed N"),
                              one row per image of that prompt
    samples.json              {"software", "count", "grid", "samples": [{"file", "prompt",
                              "negative_prompt", "seed", "height", "width", "prior_steps", ...}]}

Files are written with :func:`cascadekit.codec.fsio.atomic_write` (temporary file, fsync, rename), so an
interrupted run leaves no half file and a full disk is one clear :class:`OutputError`.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from cascadekit.codec.fsio import atomic_write, atomic_write_bytes, atomic_write_text

GRID_NAME = "grid.png"
MANIFEST_NAME = "samples.json"
LABEL_CHARS = 32  # prompt characters shown above a grid column


@dataclass
class SampleFiles:
    """What :func:`write_samples` wrote: the PNGs (in output order), the grid and the JSON manifest."""

    images: list[Path]
    grid: Path
    manifest: Path


def write_pngs(images: Sequence[Any], parameters: Sequence[dict[str, Any]], out_dir: str | Path,
               prefix: str = "image") -> list[Path]:
    """One PNG per image (PIL images or (3,H,W) tensors in [0,1]), named ``<prefix>_<seed>_<i:03d>.png``.

    Each PNG carries ``parameters`` (JSON of the whole dict) plus the main fields as separate text chunks.
    """
    from PIL.PngImagePlugin import PngInfo

    from cascadekit.codec.images import tensor_to_pil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, params) in enumerate(zip(images, parameters, strict=True)):
        if isinstance(img, torch.Tensor):
            img = tensor_to_pil(img)
        info = PngInfo()
        info.add_text("parameters", json.dumps(params, sort_keys=True))
        for k in ("prompt", "negative_prompt", "seed", "prior_steps", "prior_guidance", "decoder_steps",
                  "decoder_guidance", "weights", "software"):
            if params.get(k) is not None:
                info.add_text(k, str(params[k]))
        path = out / f"{prefix}_{params.get('seed', 0)}_{i:03d}.png"
        atomic_write(path, lambda f, img=img, info=info: img.save(f, format="PNG", pnginfo=info))
        paths.append(path)
    return paths


def _label(prompt: str, seed: Any) -> str:
    p = prompt if len(prompt) <= LABEL_CHARS else prompt[: LABEL_CHARS - 3] + "..."
    return f"{p or '(empty prompt)'} · seed {seed}"


def write_grid(images: Sequence[Any], parameters: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """A labelled grid of all images: one column per distinct (prompt, seed) in first-seen order,
    the images of that column stacked in rows (``num_images_per_prompt`` rows for a pipeline batch)."""
    from PIL import Image

    from cascadekit.codec.images import save_grid

    columns: dict[tuple[str, Any], list[Any]] = {}
    for img, params in zip(images, parameters, strict=True):
        columns.setdefault((str(params.get("prompt", "")), params.get("seed")), []).append(img)
    keys = list(columns)
    n_rows = max(len(v) for v in columns.values())
    blank = None
    if any(len(v) < n_rows for v in columns.values()):  # keep columns aligned: pad short ones with white
        first = images[0]
        blank = torch.ones_like(first) if isinstance(first, torch.Tensor) else Image.new("RGB", first.size, "white")
    rows = [[columns[k][r] if r < len(columns[k]) else blank for k in keys] for r in range(n_rows)]
    labels = [_label(p, s) for p, s in keys]
    with tempfile.TemporaryDirectory(prefix="cascadekit-grid-") as tmp:  # save_grid writes to a path
        save_grid(rows, Path(tmp) / GRID_NAME, labels=labels)
        atomic_write_bytes(path, (Path(tmp) / GRID_NAME).read_bytes())
    return Path(path)


def write_manifest(files: Sequence[Path], parameters: Sequence[dict[str, Any]], path: str | Path,
                   grid: Path | None = None) -> Path:
    """``samples.json``: every image file (name relative to the JSON) with its full generation parameters."""
    path = Path(path)
    samples = [{"file": f.name, **params} for f, params in zip(files, parameters, strict=True)]
    doc = {"software": "cascadekit", "count": len(samples), "grid": grid.name if grid else None, "samples": samples}
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def write_samples(images: Sequence[Any] | torch.Tensor, parameters: Sequence[dict[str, Any]], out_dir: str | Path,
                  prefix: str = "image") -> SampleFiles:
    """PNGs + ``grid.png`` + ``samples.json`` in ``out_dir`` (created). images: (B,3,H,W) in [0,1] or PIL list."""
    from cascadekit.codec.errors import InputError

    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] == 0:
            raise InputError(f"write_samples needs images (B,3,H,W), got {tuple(images.shape)} "
                             "(latents-only outputs have no images to write)")
        images = list(images)
    if len(images) != len(parameters) or not images:
        raise InputError(f"write_samples got {len(images)} images for {len(parameters)} parameter records")
    out = Path(out_dir)
    pngs = write_pngs(images, parameters, out, prefix)
    grid = write_grid(images, parameters, out / GRID_NAME)
    manifest = write_manifest(pngs, parameters, out / MANIFEST_NAME, grid=grid)
    return SampleFiles(images=pngs, grid=grid, manifest=manifest)
