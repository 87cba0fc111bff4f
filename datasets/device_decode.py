"""``encode --decode-on cuda``: baseline JPEGs decoded, resized and cropped on the encoder's device, in batches.

Worker side (:func:`jpeg_for_device`, called by ``decode_workers.load_task``): each file's bytes are read
once; a file :func:`~.cuda_jpeg.jpeg_gpu_reason` accepts travels to the main process as bytes, after the
header checks the CPU path makes (``decompression_bomb`` above ``max_pixels``, ``too_small`` under
``min_size``); every other file (PNG, progressive JPEG, CMYK, EXIF-rotated, truncated, ...) is decoded
and prepared in the worker as usual.

Main-thread side (:class:`DeviceImages`): one batched nvJPEG call per encoder batch
(:class:`~.cuda_jpeg.JpegBatchDecoder`; a file the GPU refuses is decoded by the CPU loader instead, a
file neither can decode is skipped with its reason), then resize + centre crop on the device with the
rule of ``codec.images.resize_center_crop`` (cover the target, bicubic, antialiased; crop offsets
rounded like torchvision) and rounding to 8 bit, so both routes hand the encoder the same kind of
input. Torch's bicubic is not PIL's: the latents of device-decoded images differ from CPU-decoded
ones in the last bits, so the store records ``preprocess.jpeg_decode_on`` and a resume with the other
decoder is refused (like any other setting).

On a CPU device torchvision's CPU ``decode_jpeg`` stands in for nvJPEG (tests; no speed gain).
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cascadekit.codec.errors import DependencyError, InputError
from cascadekit.codec.images import ImageInputError, center_offsets, check_header_pixels, cover_size, load_image
from cascadekit.codec.input_files import read_regular
from cascadekit.datasets.cuda_jpeg import JpegBatchDecoder, jpeg_gpu_reason
from cascadekit.datasets.preprocess import PreprocessConfig

#: what the store records for a build with device decoding (``settings.preprocess``)
SETTINGS_KEYS = ("jpeg_decode_on", "jpeg_resample")

ROUTE_NONE, ROUTE_CPU, ROUTE_DEVICE = 0, 1, 2  # per row of a task: skipped, decoded in the worker, bytes


def jpeg_for_device(src, cfg: PreprocessConfig, name: str | None) -> tuple[bytes, tuple[int, int] | None]:
    """Worker side: ``(bytes, (orig_h, orig_w))`` when ``src`` (path or bytes) goes to the device decoder,
    ``(bytes, None)`` when the CPU path must decode it. Raises ``ImageInputError`` like ``load_image``
    for a header the CPU path would refuse."""
    blob = bytes(src) if isinstance(src, (bytes, bytearray)) else read_regular(src, cfg.max_input_bytes)
    if jpeg_gpu_reason(blob) is not None:
        return blob, None
    try:
        with Image.open(io.BytesIO(blob)) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - the CPU loader reports why (with its reason)
        return blob, None
    check_header_pixels(w, h, cfg.max_pixels, name)
    if cfg.min_size is not None and min(w, h) < cfg.min_size:
        raise ImageInputError("too_small", f"image is {w}x{h}, shorter side below min_size={cfg.min_size}", name)
    return blob, (h, w)


def fit_crop(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3,H,W) uint8 on any device -> (3,ch,cw) uint8: resize to cover ``size`` (bicubic, antialiased),
    centre-crop (``codec.images.resize_center_crop``'s sizes and offsets), round to 8 bit."""
    ch, cw = size
    h, w = img.shape[-2:]
    nh, nw = cover_size((h, w), size)
    x = img[None].float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = center_offsets((nh, nw), size)
    return x[0, :, top:top + ch, left:left + cw].round().clamp_(0, 255).to(torch.uint8)


def check_device_decode(device: torch.device) -> None:
    """Before any work: torchvision's ``decode_jpeg`` must exist (and, on CUDA, take a device)."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401  (lazy: torchvision only for this option)
    except ImportError as e:
        raise DependencyError("decoding JPEGs on the device needs torchvision (pip install torchvision)") from e
    if device.type not in ("cuda", "cpu"):
        raise InputError(f"JPEG decoding on the device needs a CUDA (or CPU) encoder, not {device.type}")


class DeviceImages:
    """Main-thread side: a decoded task's rows -> ``(uint8 images (n_ok,3,H,W) on device, ok, reasons)``.

    ``gpu_decode`` replaces the nvJPEG call (tests); ``counts`` tallies the routes (see ``JpegBatchDecoder``
    plus ``worker``: rows the workers decoded on the CPU).
    """

    def __init__(self, device: torch.device, cfg: PreprocessConfig, gpu_decode: Callable | None = None):
        self.device = device
        self.cfg = cfg
        kw = {"gpu_decode": gpu_decode} if gpu_decode is not None else {}
        self.decoder = JpegBatchDecoder(device, self._cpu_decode, **kw)
        self.worker_rows = 0

    def _cpu_decode(self, blob: bytes) -> torch.Tensor:
        img = load_image(blob, max_pixels=self.cfg.max_pixels, max_bytes=self.cfg.max_input_bytes)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())

    @property
    def counts(self) -> dict:
        return {**self.decoder.counts, "worker": self.worker_rows}

    def __call__(self, item: dict) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        route, hw = item["route"].numpy(), tuple(item["hw"])
        ok, reasons = item["ok"].numpy().copy(), list(item["reasons"])
        decoded = iter(self.decoder.decode(item["blobs"]))
        cpu = iter(item["images"].to(self.device, non_blocking=True))
        self.worker_rows += int((route == ROUTE_CPU).sum())
        out = []
        for i, r in enumerate(route.tolist()):
            if r == ROUTE_CPU:
                out.append(next(cpu))
            elif r == ROUTE_DEVICE:
                img = next(decoded)
                if isinstance(img, Exception):  # neither decoder could read it: skipped, recorded
                    ok[i], reasons[i] = False, getattr(img, "reason", None) or "unreadable"
                else:
                    out.append(fit_crop(img, hw))
        images = torch.stack(out) if out else torch.zeros((0, 3, *hw), dtype=torch.uint8, device=self.device)
        return images, ok, reasons


def settings_entry(device: torch.device) -> dict:
    """What a build with device decoding adds to ``settings.preprocess`` (its bytes depend on it)."""
    return dict(zip(SETTINGS_KEYS, (device.type, "torch-bicubic-antialiased")))


__all__ = ["DeviceImages", "ROUTE_CPU", "ROUTE_DEVICE", "ROUTE_NONE", "check_device_decode", "fit_crop",
           "jpeg_for_device", "settings_entry"]
