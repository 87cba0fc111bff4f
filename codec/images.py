"""Safe image loading and the small image <-> tensor helpers every stage uses.

Loading (:func:`load_image`) accepts a path, raw bytes or a binary file object and always returns a
fully decoded 8-bit RGB :class:`PIL.Image.Image`:

* EXIF orientation is applied (``ImageOps.exif_transpose``).
* Every PIL mode becomes RGB correctly: palette (with or without transparency), ``1``, ``L``,
  ``LA``/``RGBA``/``PA`` (composited on white), CMYK (through its embedded ICC profile when there is
  one), 16-bit integer (``I;16*``: scaled by 255/65535, not clipped), 32-bit integer ``I`` (scaled as
  16-bit when it lies in [0, 65535], else min-max stretched) and 32-bit float ``F`` (in [0, 1] it is
  scaled by 255, else min-max stretched).
* The pixel count in the header is checked against ``max_pixels`` *before* decoding (decompression
  bomb guard; PIL's own ``DecompressionBombWarning``/``Error`` become our error), then the image is
  decoded completely (``img.load()``) so truncated files fail here, not later in a worker.
* A path must be a regular file, opened without blocking, and at most ``max_bytes`` are read
  (:mod:`cascadekit.codec.input_files`): a FIFO, a device or ``/dev/zero`` is refused, not read.

Every failure raises :class:`~cascadekit.codec.errors.InputError` whose ``reason`` attribute is one
of :data:`REASONS` (machine friendly, e.g. for dataset skip statistics) and whose message says what
to do.

Resizing uses PIL's antialiased resampling (``BICUBIC`` by default; PIL scales the filter support
with the downscale factor, so downsizing is antialiased). Tensors at API boundaries are float32
(B,3,H,W) in [0, 1].
"""
from __future__ import annotations

import io
import math
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from cascadekit.codec.errors import InputError
from cascadekit.codec.input_files import DEFAULT_MAX_INPUT_BYTES, InputFileError, read_regular

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_INPUT_BYTES",
    "REASONS",
    "ImageInputError",
    "load_image",
    "to_rgb",
    "resize_short_side",
    "center_crop",
    "resize_center_crop",
    "pil_to_tensor",
    "tensor_to_pil",
    "to_batch",
    "save_grid",
    "imagenet_normalize",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

#: PIL's own default limit (``Image.MAX_IMAGE_PIXELS``, ~89.5 Mpx, a 0.25 GB 24-bit image).
DEFAULT_MAX_PIXELS = 89_478_485

#: The values :attr:`ImageInputError.reason` can take.
REASONS = ("empty", "not_an_image", "truncated", "decompression_bomb", "too_small", "unreadable", "not_a_file",
           "too_large")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


class ImageInputError(InputError):
    """An image could not be used. ``reason`` is one of :data:`REASONS`; ``source`` names the input."""

    def __init__(self, reason: str, message: str, source: str | None = None):
        assert reason in REASONS, reason
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{message} [reason={reason}]")


def _describe(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return getattr(src, "name", None) or f"<{type(src).__name__}>"


def _open_bytes(src, max_bytes: int | None) -> io.BytesIO:
    """Read ``src`` into memory (paths, bytes and file objects alike); raise on empty/unreadable.

    Paths go through :func:`~cascadekit.codec.input_files.read_regular` (regular files only, opened
    non-blocking, at most ``max_bytes``); a file object is read up to ``max_bytes + 1`` bytes.
    """
    name = _describe(src)
    try:
        if isinstance(src, (str, os.PathLike)):
            data = read_regular(src, max_bytes)
        elif isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
        elif hasattr(src, "read"):
            data = src.read() if max_bytes is None else src.read(max_bytes + 1)
            if not isinstance(data, (bytes, bytearray)):
                raise ImageInputError("unreadable", "the file object must be opened in binary mode ('rb')", name)
        else:
            raise ImageInputError(
                "unreadable", f"expected a path, bytes or a binary file object, got {type(src).__name__}", name
            )
    except ImageInputError:
        raise
    except InputFileError as e:  # not a regular file, above the cap, cannot be opened
        raise ImageInputError(e.reason, str(e)) from e
    except OSError as e:  # a file object that fails to read
        raise ImageInputError("unreadable", f"cannot read the file ({e.strerror or e})", name) from e
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageInputError("too_large", f"more than max_input_bytes={max_bytes:,} bytes; raise the cap "
                              "(--max-input-bytes) if this input is legitimate", name)
    if len(data) == 0:
        raise ImageInputError("empty", "the file is empty (0 bytes); re-download or drop it", name)
    return io.BytesIO(data)


# over 60 lines only by its docstring (arguments, return, error reasons); the decoding is _decode_first_frame
def load_image(
    src: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
    max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES,
) -> Image.Image:
    """Load ``src`` as a fully decoded 8-bit RGB image with EXIF orientation applied.

    Args:
        src: a path, the encoded bytes, or a binary file object.
        max_pixels: largest allowed ``width * height`` read from the header before decoding
            (``None`` disables our check; PIL's hard limit of ``2 * Image.MAX_IMAGE_PIXELS`` still
            applies).
        min_side: smallest allowed ``min(width, height)`` after EXIF rotation.
        max_bytes: most bytes read from ``src`` (default 256 MiB; ``None``: no cap). A path must be a
            regular file (FIFOs, devices, sockets are refused unopened, reason ``not_a_file``).

    Returns:
        ``PIL.Image.Image`` in mode ``"RGB"``, independent of any open file.

    Raises:
        ImageInputError (an :class:`InputError`) with ``reason`` in :data:`REASONS`.
    """
    name = _describe(src)
    buf = _open_bytes(src, max_bytes)
    with warnings.catch_warnings():
        # we run our own (configurable) pixel-count check on the header below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(buf)
        except Image.DecompressionBombError as e:
            raise ImageInputError("decompression_bomb", f"refusing to decode: {e}", name) from e
        except UnidentifiedImageError as e:
            raise ImageInputError(
                "not_an_image", "not a recognised image format (PIL cannot identify it)", name
            ) from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageInputError("unreadable", f"cannot parse the image header ({e})", name) from e

        with img:
            w, h = img.size
            check_header_pixels(w, h, max_pixels, name)
            if w <= 0 or h <= 0:
                raise ImageInputError("too_small", f"image has no pixels ({w}x{h})", name)
            _decode_first_frame(img, name)
            if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:  # size may change on load
                raise ImageInputError("decompression_bomb", f"decoded size {img.size} above max_pixels", name)
            try:
                if img.getexif().get(0x0112, 1) not in (0, 1):  # rotate/flip only when needed (saves a copy)
                    img = ImageOps.exif_transpose(img) or img
            except Exception:  # noqa: BLE001 - corrupt EXIF: keep the stored orientation
                pass
            rgb = to_rgb(img)
    if min(rgb.size) < min_side:
        raise ImageInputError(
            "too_small", f"image is {rgb.size[0]}x{rgb.size[1]}, smaller than min_side={min_side}", name
        )
    return rgb


def check_header_pixels(w: int, h: int, max_pixels: int | None, name: str | None) -> None:
    """The decompression-bomb guard on a header's ``w x h`` (before decoding): ImageInputError
    ``decompression_bomb`` above ``max_pixels`` (``None``: no limit)."""
    if max_pixels is not None and w * h > max_pixels:
        raise ImageInputError("decompression_bomb", f"header says {w}x{h} = {w * h:,} pixels, above "
                              f"max_pixels={max_pixels:,}; raise max_pixels if this image is legitimate", name)


def _decode_first_frame(img: Image.Image, name: str) -> None:
    """Decode the first frame of ``img`` in place; a failure is ImageInputError (``truncated`` / ``unreadable`` /
    ``decompression_bomb``)."""
    try:
        img.seek(0)  # first frame of animations / multi-page files
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageInputError("decompression_bomb", f"refusing to decode: {e}", name) from e
    except (OSError, SyntaxError, EOFError, ValueError, struct.error) as e:
        text = str(e).lower()
        truncated = isinstance(e, EOFError) or any(
            s in text for s in ("truncated", "end of file", "eof", "broken data stream", "not enough data")
        )
        if truncated:
            raise ImageInputError("truncated", f"the file is truncated or cut off ({e})", name) from e
        raise ImageInputError("unreadable", f"the image data cannot be decoded ({e})", name) from e


def _stretch(a: np.ndarray) -> np.ndarray:
    """Map finite values linearly onto [0, 255] (constant images become 0)."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _gray_to_u8(img: Image.Image) -> np.ndarray:
    """High bit depth single-channel image -> uint8 array (see module docstring for the rules)."""
    mode = img.mode
    if mode.startswith("I;16"):
        a = np.asarray(img).astype(np.float64)
        return np.round(a * (255.0 / 65535.0)).astype(np.uint8)
    if mode == "I":
        a = np.asarray(img).astype(np.float64)
        if a.size and a.min() >= 0 and a.max() <= 65535:
            return np.round(a * (255.0 / 65535.0)).astype(np.uint8)
        return _stretch(a)
    if mode == "F":
        a = np.nan_to_num(np.asarray(img).astype(np.float64), nan=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            return np.round(a * 255.0).astype(np.uint8)
        return _stretch(a)
    raise ValueError(mode)


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
        except Exception:  # noqa: BLE001 - broken/unsupported profile: naive conversion below
            pass
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (transparency composited on white). Returns a new image."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _on_white(img)
    if mode == "P":
        if "transparency" in img.info or img.has_transparency_data:
            return _on_white(img)
        return img.convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_gray_to_u8(img), "L").convert("RGB")
    try:  # L, 1, RGBX, YCbCr, LAB, HSV, ...
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageInputError("unreadable", f"unsupported image mode {mode!r} ({e})") from e


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize_short_side(img: Image.Image, size: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """Resize so the shorter side is ``size`` (aspect kept, long side rounded). Antialiased (PIL)."""
    if size <= 0:
        raise InputError(f"resize size must be positive, got {size}")
    w, h = img.size
    if min(w, h) == size:
        return img.copy()
    if w <= h:
        nw, nh = size, max(1, round(h * size / w))
    else:
        nw, nh = max(1, round(w * size / h)), size
    return img.resize((nw, nh), resample=resample)


def cover_size(hw: tuple[int, int], size) -> tuple[int, int]:
    """(H', W') that an (H, W) image is resized to, aspect kept, so that it covers ``size`` (int or (H, W))."""
    ch, cw = _size_hw(size)
    h, w = hw
    scale = max(cw / w, ch / h)
    return max(ch, round(h * scale)), max(cw, round(w * scale))


def center_offsets(hw: tuple[int, int], size) -> tuple[int, int]:
    """(top, left) of the centred ``size`` crop of an (H, W) image, rounded like torchvision's ``center_crop``."""
    ch, cw = _size_hw(size)
    return int(round((hw[0] - ch) / 2.0)), int(round((hw[1] - cw) / 2.0))


def center_crop(img: Image.Image, size) -> Image.Image:
    """Crop the centre ``size`` (int or (H, W)); the offset rounds like torchvision's ``center_crop``."""
    ch, cw = _size_hw(size)
    w, h = img.size
    if cw > w or ch > h:
        raise InputError(f"cannot centre-crop {cw}x{ch} out of a {w}x{h} image; resize first")
    top, left = center_offsets((h, w), (ch, cw))
    return img.crop((left, top, left + cw, top + ch))


def resize_center_crop(img: Image.Image, size, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """Resize so the image covers ``size`` (int or (H, W)), then centre-crop to exactly that size."""
    w, h = img.size
    nh, nw = cover_size((h, w), size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample=resample)
    return center_crop(img, size)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit PIL image -> float32 tensor (3,H,W) in [0, 1] (non-RGB modes go through :func:`to_rgb`)."""
    if img.mode != "RGB":
        img = to_rgb(img)
    a = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """(3,H,W) or (1,3,H,W) tensor in [0, 1] -> RGB PIL image (values clamped, rounded to 8 bit)."""
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise InputError(f"tensor_to_pil expects (3,H,W) or (1,3,H,W), got {tuple(x.shape)}")
    a = x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(a), "RGB")


def to_batch(images, *, tol: float = 1e-3) -> torch.Tensor:
    """Turn images into one float32 batch (B,3,H,W) in [0, 1].

    Accepts a tensor (3,H,W) or (B,3,H,W) of floats in [0, 1] (values within ``tol`` outside the
    range are clamped), a PIL image, or a list of PIL images / (3,H,W) tensors of one size.
    Raises :class:`InputError` for wrong shapes, integer tensors, non-finite values, values outside
    [0, 1], mixed sizes and empty lists.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise InputError("no images given (empty list)")
        parts = []
        for i, im in enumerate(images):
            if isinstance(im, Image.Image):
                parts.append(pil_to_tensor(im))
            elif isinstance(im, torch.Tensor):
                t = to_batch(im, tol=tol)
                if t.shape[0] != 1:
                    raise InputError(f"list element {i} is a batch {tuple(im.shape)}; pass single images (3,H,W)")
                parts.append(t[0])
            else:
                raise InputError(f"list element {i} is a {type(im).__name__}; expected PIL images or tensors")
        sizes = {tuple(p.shape[1:]) for p in parts}
        if len(sizes) > 1:
            raise InputError(
                f"images have different sizes {sorted(sizes)}; resize them first (e.g. resize_center_crop)"
            )
        return torch.stack(parts)
    if not isinstance(images, torch.Tensor):
        raise InputError(f"expected a tensor, a PIL image or a list of them, got {type(images).__name__}")
    x = images
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise InputError(f"images must be (B,3,H,W) or (3,H,W) RGB, got shape {tuple(images.shape)}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise InputError(f"empty image batch {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(
            f"images must be float in [0, 1], got dtype {x.dtype}; for uint8 data use x.float() / 255"
        )
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError("images contain NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -tol or hi > 1 + tol:
        hint = " (they look like [-1, 1]; use (x + 1) / 2)" if lo >= -1 - tol and lo < -tol else ""
        hint = hint or (" (they look like 0..255; divide by 255)" if hi > 1.5 else "")
        raise InputError(f"image values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]{hint}")
    return x.clamp(0, 1)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [0, 1] -> ImageNet-normalised ``(x - mean) / std`` (same device and dtype)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def save_grid(
    rows: Sequence[Sequence[torch.Tensor | Image.Image]],
    path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    *,
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Path:
    """Save a PNG grid: ``rows[r][c]`` is an image (3,H,W)/(1,3,H,W) tensor in [0, 1] or PIL image.

    Cells may differ in size: each column is as wide as its widest cell (and its label), each row as
    tall as its tallest, and cells are centred. ``labels`` (one per column) are written above the columns.
    The parent folder of ``path`` is created. Returns the path written.
    """
    if not rows or not all(len(r) for r in rows):
        raise InputError("save_grid needs at least one non-empty row")
    cells = [[c if isinstance(c, Image.Image) else tensor_to_pil(c) for c in row] for row in rows]
    ncol = max(len(r) for r in cells)
    if labels is not None and len(labels) != ncol:
        raise InputError(f"save_grid got {len(labels)} labels for {ncol} columns")
    col_w = [max(r[c].size[0] for r in cells if c < len(r)) for c in range(ncol)]
    row_h = [max(im.size[1] for im in r) for r in cells]
    label_h = 14 if labels else 0
    if labels:  # columns at least as wide as their label
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        col_w = [max(w, math.ceil(measure.textlength(str(t)))) for w, t in zip(col_w, labels)]
    W = sum(col_w) + pad * (ncol + 1)
    H = sum(row_h) + pad * (len(cells) + 1) + label_h
    canvas = Image.new("RGB", (W, H), background)
    draw = ImageDraw.Draw(canvas)
    x0s = [pad + sum(col_w[:c]) + pad * c for c in range(ncol)]
    if labels:
        for c, text in enumerate(labels):
            draw.text((x0s[c], pad // 2), str(text), fill=(0, 0, 0))
    y = pad + label_h
    for r, row in enumerate(cells):
        for c, im in enumerate(row):
            ox = x0s[c] + (col_w[c] - im.size[0]) // 2
            oy = y + (row_h[r] - im.size[1]) // 2
            canvas.paste(im, (ox, oy))
        y += row_h[r] + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
