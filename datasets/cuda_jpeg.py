"""Batched JPEG decoding on the GPU (nvJPEG through ``torchvision.io.decode_jpeg(..., device='cuda')``) with a CPU fallback.

Only files the GPU decoder handles exactly like the CPU path go to the GPU: baseline JPEGs (SOF0),
8-bit, 1 or 3 components, no EXIF orientation other than "normal", ending in an end-of-image
marker (a truncated file goes to the CPU loader, which reports it as ``truncated``). Everything else (progressive,
extended or lossless JPEGs, CMYK, rotated photos, PNG/WebP/...) and every file the GPU decoder rejects
is decoded by ``cpu_decode`` — the normal loader — so a batch never fails because of one file.

:func:`jpeg_gpu_reason` is the routing rule (pure byte parsing, CPU-testable); :class:`JpegBatchDecoder`
does the batch: ``decode(blobs) -> list of (3, H, W) uint8 tensors on the decoder's device, or the
exception ``cpu_decode`` raised for that item``.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

SOF_BASELINE = 0xC0
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field


def _exif_orientation(data: bytes) -> int:
    """EXIF orientation tag (1 = normal) read through PIL's header parser (no pixel decoding)."""
    from PIL import Image  # lazy: only for JPEGs that carry an EXIF block

    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # an unreadable EXIF block: let the CPU loader decide about the file
        return -1


def jpeg_gpu_reason(data: bytes) -> str | None:
    """None when ``data`` is a JPEG the GPU path decodes like the CPU path, else why not (a short phrase)."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return "not a JPEG"
    pos, has_exif = 2, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return "corrupt marker stream"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        segment = data[pos + 4:pos + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            has_exif = True
        if marker in _SOF_MARKERS:
            if marker != SOF_BASELINE:
                return f"not baseline (SOF{marker - 0xC0})"
            if len(segment) < 6:
                return "truncated frame header"
            precision, ncomp = segment[0], segment[5]
            if precision != 8 or ncomp not in (1, 3):
                return f"{precision}-bit, {ncomp} components"
            if has_exif and _exif_orientation(data) not in (0, 1):
                return "EXIF orientation"
            if not data.rstrip(b"\0").endswith(b"\xff\xd9"):  # nvJPEG may fill a cut-off scan silently
                return "no end-of-image marker"
            return None
        if marker == 0xDA:  # start of scan before any frame header
            return "no frame header"
        pos += 2 + length
    return "truncated header"


def _torchvision_decode(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's decoder: one batched call (torchvision >= 0.20), else one call per image (0.19, torch 2.4)."""
    import torchvision  # lazy: torchvision only for this option
    from torchvision.io import ImageReadMode, decode_jpeg

    if _takes_lists(torchvision.__version__):
        return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    return [decode_jpeg(d, mode=ImageReadMode.RGB, device=device) for d in datas]


def _takes_lists(version: str) -> bool:
    """Whether this torchvision's ``decode_jpeg`` decodes a list of images in one call (added in 0.20)."""
    try:
        major, minor = (int("".join(c for c in part if c.isdigit()) or 0) for part in version.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (0, 20)


@dataclass
class JpegBatchDecoder:
    """Decode a batch of encoded images: baseline JPEGs on ``device`` in one batched call, the rest on the CPU.

    ``cpu_decode(bytes) -> (3,H,W) uint8 tensor`` (raising for a bad file) is the fallback;
    ``gpu_decode(list of uint8 byte tensors, device)`` defaults to torchvision's nvJPEG decoder.
    ``counts`` tallies the route of every item: ``gpu``, ``cpu`` (routed there) and ``gpu_failed``.
    """

    device: torch.device
    cpu_decode: Callable[[bytes], torch.Tensor]
    gpu_decode: Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]] = _torchvision_decode
    counts: dict = field(default_factory=lambda: {"gpu": 0, "cpu": 0, "gpu_failed": 0})

    def decode(self, blobs: Sequence[bytes]) -> list[torch.Tensor | Exception]:
        """One result per blob, in order: a (3, H, W) uint8 tensor on ``device``, or the decoding exception."""
        gpu_idx = [i for i, b in enumerate(blobs) if jpeg_gpu_reason(b) is None]
        out: list = [None] * len(blobs)
        for i, img in zip(gpu_idx, self._gpu(blobs, gpu_idx)):
            out[i] = img
        for i, b in enumerate(blobs):
            if out[i] is None:
                out[i] = self._cpu(b)
        return out

    def _gpu(self, blobs: Sequence[bytes], idx: list[int]) -> list[torch.Tensor | None]:
        """Batched decode; when the batch call fails, one by one; None for the items that still fail."""
        if not idx:
            return []
        datas = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in idx]
        try:
            imgs = list(self.gpu_decode(datas, self.device))
        except Exception:
            imgs = [self._gpu_one(d) for d in datas]
        self.counts["gpu"] += sum(img is not None for img in imgs)
        self.counts["gpu_failed"] += sum(img is None for img in imgs)
        return imgs

    def _gpu_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return self.gpu_decode([data], self.device)[0]
        except Exception:  # nvJPEG refuses the file: the CPU loader decodes it (or reports why not)
            return None

    def _cpu(self, blob: bytes) -> torch.Tensor | Exception:
        self.counts["cpu"] += 1
        try:
            return self.cpu_decode(blob).to(self.device, non_blocking=True)
        except Exception as e:  # reported per item by the caller (skipped and recorded)
            return e
