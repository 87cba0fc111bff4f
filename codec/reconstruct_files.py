"""Reconstruct image files through a :class:`~cascadekit.codec.codec.Codec` and write the results.

:func:`reconstruct_files` is what ``cascadekit reconstruct`` runs: each image is loaded safely,
resized (short side ``size``) and centre-cropped to a multiple of 64 pixels (the released Stage B's
natural unit), encoded to the 16-channel latent, decoded again, and written as
``<out>/<index>_<stem>_recon.png``; one ``grid.png`` shows every pair (original | reconstruction),
and ``reconstruct.json`` records the parameters, the codec identity and per-image PSNR.
Nothing is written outside ``out``.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Sequence

import torch

from cascadekit.codec.codec import DECODE_DEFAULTS, DECODE_SETTINGS
from cascadekit.codec.errors import InputError
from cascadekit.codec.fsio import atomic_write, atomic_write_json
from cascadekit.codec.images import center_crop, load_image, pil_to_tensor, resize_short_side, save_grid, tensor_to_pil

CROP_MULTIPLE = 64


def short_side_size(w: int, h: int, size: int | None) -> tuple[int, int]:
    """``(width, height)`` of a ``w`` x ``h`` image after :func:`resize_short_side` to ``size`` (None: kept)."""
    if size is None or min(w, h) == size:
        return w, h
    return (size, max(1, round(h * size / w))) if w <= h else (max(1, round(w * size / h)), size)


def prepare_image(path: str | os.PathLike, size: int | None, max_pixels: int | None = None) -> torch.Tensor:
    """Load ``path`` -> (3,H,W) in [0,1]: short side resized to ``size`` (None: kept), then centre-cropped
    so H and W are multiples of 64 (of 4 when the image is smaller than 64). An output above ``max_pixels``
    (None: no limit; an elongated image's long side grows with ``size``) is an InputError before resizing."""
    img = load_image(path)
    nw, nh = short_side_size(*img.size, size)
    if max_pixels is not None and nw * nh > max_pixels:
        raise InputError(f"{path}: a {img.size[0]}x{img.size[1]} image resized to short side {size} (--size) is "
                         f"{nw}x{nh} = {nw * nh} pixels, above the budget of {max_pixels} pixels per image; "
                         "use a smaller --size or crop the image first")
    if size is not None:
        img = resize_short_side(img, size)
    w, h = img.size
    m = CROP_MULTIPLE if min(w, h) >= CROP_MULTIPLE else 4
    ch, cw = max(m, h // m * m), max(m, w // m * m)
    if (ch, cw) != (h, w) and ch <= h and cw <= w:
        img = center_crop(img, (ch, cw))
    return pil_to_tensor(img)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1] after 8-bit quantisation (what the PNGs hold)."""
    a8, b8 = (a.clamp(0, 1) * 255).round(), (b.clamp(0, 1) * 255).round()
    mse = float(((a8 - b8) / 255).pow(2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:80] or "image"


def reconstruct_files(
    codec,
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    size: int | None = 1024,
    steps: int = DECODE_SETTINGS.steps,
    guidance: float = DECODE_SETTINGS.cfg,
    seed: int = 0,
    weights_info: dict | None = None,
    progress: bool | None = None,
    max_pixels: int | None = None,
) -> dict:
    """Reconstruct every image in ``paths`` into folder ``out``; return the summary written to
    ``out/reconstruct.json``. All images are loaded (and validated, each output size against ``max_pixels``
    pixels) before any model runs."""
    paths = [Path(p) for p in paths]
    originals = [prepare_image(p, size, max_pixels) for p in paths]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = bool(getattr(codec, "tiny", False))
    rows, records = [], []
    for i, (p, x) in enumerate(zip(paths, originals)):
        z = codec.encode(x[None])
        y = codec.decode(z, steps=steps, guidance=guidance, seed=seed, size=tuple(x.shape[-2:]), progress=progress)[0]
        name = f"{i:03d}_{_safe_stem(p)}_recon.png"
        png = tensor_to_pil(y)
        atomic_write(out / name, lambda f: png.save(f, format="PNG"))
        rows.append([x, y])
        records.append({
            "input": str(p),
            "reconstruction": name,
            "size": list(x.shape[-2:]),
            "latent_shape": list(z.shape[1:]),
            "psnr_db": round(psnr(x, y.cpu()), 3),
        })
    label = "reconstruction" + (" (TINY RANDOM WEIGHTS)" if tiny else "")
    save_grid(rows, out / "grid.png", labels=["original", label])
    summary = {
        "tiny_random_weights": tiny,
        "warning": "outputs come from TINY RANDOM weights and are meaningless" if tiny else None,
        "parameters": {"size": size, "steps": steps, "guidance": guidance, "seed": seed,
                       "encoder_resolution": codec.encoder_resolution,
                       **{k: DECODE_DEFAULTS[k] for k in ("sampler", "cfg_rho", "shift")}},  # what decode used
        "weights": weights_info or {},
        "codec": codec.identity(),
        "grid": "grid.png",
        "images": records,
    }
    atomic_write_json(out / "reconstruct.json", summary)
    return summary
