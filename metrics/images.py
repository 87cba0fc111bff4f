"""Small, safe image reading for the metrics (the package imports nothing else of cascadekit).

- reads regular files only (a FIFO or a device is never opened) and at most `max_bytes` of them
- refuses decompression bombs before decoding (pixel-count check on the header size, no global PIL setting changed)
- applies the EXIF orientation
- converts every mode to 8-bit RGB: grayscale is replicated, alpha is composited over white, 16-bit/float
  grayscale is rescaled; the conversion is reported so the evaluation can list it
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import MetricInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
DEFAULT_MAX_PIXELS = 8192 * 8192
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # most bytes read from one image file


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert any PIL image to 8-bit RGB. Returns (rgb, note) where note describes a conversion or is None."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img).astype(np.float64)
        hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([a] * 3, axis=-1), "RGB"), f"converted from {mode} (rescaled to 8 bit)"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "RGB":
            return img, "converted from P (palette)"
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), f"converted from {mode} (alpha over white)"
    return img.convert("RGB"), f"converted from {mode}"


def read_file_bytes(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of `path` if it is a regular file of at most `max_bytes` (stat before opening, so a FIFO or a
    device is never opened; opened O_NONBLOCK and re-checked with fstat, so one swapped in later cannot block).
    Raises MetricInputError. For every input file the metrics read (images, saved .npz statistics).
    cascadekit.codec.input_files does the same for the codec; the metrics package imports nothing of cascadekit."""
    path = Path(path)
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read(max_bytes + 1) if stat.S_ISREG(st.st_mode) else b""
    except OSError as e:
        raise MetricInputError(f"{path}: cannot read image ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):
        raise MetricInputError(f"{path}: not a regular file (FIFO, device, socket or directory); only regular "
                               "files are read")
    if max(st.st_size, len(data)) > max_bytes:
        raise MetricInputError(f"{path}: {max(st.st_size, len(data))} bytes, above the input cap of {max_bytes} "
                               "bytes (max_bytes)")
    return data


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Image.Image, str | None]:
    """Read one image file as 8-bit RGB with EXIF orientation applied.

    Returns (image, note) where note describes a mode conversion (or None).
    Raises MetricInputError for unreadable files, paths that are not regular files (never opened), files over
    `max_bytes` bytes (default 256 MiB; at most that much is read) and images over `max_pixels` pixels.
    """
    path = Path(path)
    data = read_file_bytes(path, max_bytes)
    try:
        with warnings.catch_warnings():  # our own pixel limit below replaces PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise MetricInputError(
                    f"{path}: {w}×{h} = {w * h} pixels exceeds the limit of {max_pixels} (decompression-bomb guard)")
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb, note = to_rgb(im)
            rgb.load()
            return rgb, note
    except MetricInputError:
        raise
    except Exception as e:  # PIL raises many types for truncated/corrupt/unsupported files
        raise MetricInputError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def _inside(real: str, folders: set[str]) -> bool:
    return any(real == f or real.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def list_images(folder: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Image entries under `folder` (recursive, by suffix; symlinked folders not followed), sorted by relative
    path. Entries that are not regular files (FIFOs, devices) are listed too, so that reading them fails with a
    recorded reason instead of vanishing. Folders in `exclude` (e.g. the report folder) are not entered."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MetricInputError(f"{folder} is not a folder of images")
    excluded = {os.path.realpath(os.fspath(x)) for x in exclude}
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _inside(os.path.realpath(os.path.join(dirpath, d)), excluded)]
        found += [Path(dirpath, f) for f in filenames if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def image_key(path: Path, root: Path) -> str:
    """Key of an image: its path relative to the folder, without suffix, '/'-separated."""
    return path.relative_to(root).with_suffix("").as_posix()


def iter_folder(folder: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = (),
                duplicates: list[tuple[str, Path]] | None = None) -> Iterator[tuple[str, Path]]:
    """Yield (key, path) for every image file under `folder` (reading is left to the consumer).

    Keys follow `cascadekit encode`'s folder rule: when images of one folder share a stem (`a.jpg`, `a.png`),
    the first in sorted order that is a regular file keeps the key `a`. With a `duplicates` list the others
    are appended to it as (key, path) instead of being yielded (callers that match by key record them as
    skipped); without one every image is yielded (e.g. for FID, where keys do not matter).
    `exclude`: folders never entered (the caller's output folder).
    """
    root = Path(folder)
    paths = list_images(root, exclude)
    owner: dict[str, Path] = {}
    for p in paths:  # sorted: the first regular file of a key owns it
        k = image_key(p, root)
        if k not in owner and p.is_file():
            owner[k] = p
    for p in paths:
        k = image_key(p, root)
        if duplicates is not None and owner.get(k, p) != p:
            duplicates.append((k, p))
        else:
            yield k, p


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> (3,H,W) float32 in [0,1]."""
    a = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


def tensor_to_rgb(x: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """(C,H,W) float tensor in [0,1] with C in {1,2,3,4} -> ((3,H,W) float32, note). Alpha composited over white."""
    if x.dim() != 3 or x.shape[0] not in (1, 2, 3, 4):
        raise MetricInputError(f"image tensor must be (C,H,W) with C in 1..4, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise MetricInputError(f"image tensor must be float in [0,1], got {x.dtype}")
    x = x.float()
    c = x.shape[0]
    if c == 3:
        return x, None
    if c in (2, 4):
        alpha = x[-1:].clamp(0, 1)
        x = x[:-1] * alpha + (1 - alpha)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1).contiguous()
    return x, f"converted from {c}-channel tensor"
