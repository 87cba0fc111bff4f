"""datasets.cuda_jpeg: which files go to the GPU JPEG decoder, and the CPU fallback (run on CPU here)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cascadekit.datasets.cuda_jpeg import JpegBatchDecoder, jpeg_gpu_reason

pytest.importorskip("torchvision")


def _img(mode: str = "RGB", size=(24, 16)) -> Image.Image:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(a).convert(mode)


def _bytes(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _bytes(_img(), exif=exif.tobytes())


def _normal_exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 1
    return _bytes(_img(), exif=exif.tobytes())


def _cpu_decode(blob: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(blob)) as im:
        a = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    return torch.from_numpy(a.copy()).permute(2, 0, 1)


def test_routing_rule():
    assert jpeg_gpu_reason(_bytes(_img())) is None
    assert jpeg_gpu_reason(_bytes(_img("L"))) is None
    assert jpeg_gpu_reason(_normal_exif_jpeg()) is None
    assert jpeg_gpu_reason(_bytes(_img(), progressive=True)) == "not baseline (SOF2)"
    assert jpeg_gpu_reason(_bytes(_img("CMYK"))) == "8-bit, 4 components"
    assert jpeg_gpu_reason(_rotated_jpeg()) == "EXIF orientation"
    assert jpeg_gpu_reason(_bytes(_img(), "PNG")) == "not a JPEG"
    assert jpeg_gpu_reason(_bytes(_img())[:20]) == "truncated header"
    assert jpeg_gpu_reason(b"") == "not a JPEG"


def test_batch_decode_routes_and_falls_back():
    blobs = [_bytes(_img()), _bytes(_img(), progressive=True), _bytes(_img(), "PNG"), b"\xff\xd8garbage",
             _bytes(_img("L")), _rotated_jpeg()]
    dec = JpegBatchDecoder(torch.device("cpu"), _cpu_decode)  # torchvision's CPU decoder stands in for nvJPEG
    out = dec.decode(blobs)
    assert dec.counts == {"gpu": 2, "cpu": 4, "gpu_failed": 0}
    for i in (0, 1, 2, 4, 5):
        assert isinstance(out[i], torch.Tensor) and out[i].dtype == torch.uint8 and out[i].shape[0] == 3
    assert isinstance(out[3], Exception)  # a broken file is reported, not raised: the caller skips and records it
    ref = _cpu_decode(blobs[0])
    assert (out[0].int() - ref.int()).abs().max() <= 2  # libjpeg builds may differ by rounding
    assert out[5].shape[1:] == (24, 16)  # rotated upright by the CPU loader (the GPU decoder would not)


def test_batch_failure_retries_one_by_one_then_cpu():
    calls = []

    def flaky(datas, device):
        calls.append(len(datas))
        if len(datas) > 1:
            raise RuntimeError("batched decode failed")
        if datas[0].numel() % 2:  # pretend the GPU refuses odd-sized files
            raise RuntimeError("nvjpeg: unsupported")
        from torchvision.io import ImageReadMode, decode_jpeg
        return [decode_jpeg(datas[0], mode=ImageReadMode.RGB)]

    blobs = [_bytes(_img(size=(24 + k, 16))) for k in range(4)]
    n_odd = sum(len(b) % 2 for b in blobs)
    dec = JpegBatchDecoder(torch.device("cpu"), _cpu_decode, gpu_decode=flaky)
    out = dec.decode(blobs)
    assert calls[0] == 4 and calls[1:] == [1, 1, 1, 1]
    assert dec.counts == {"gpu": 4 - n_odd, "cpu": n_odd, "gpu_failed": n_odd}
    assert [tuple(o.shape) for o in out] == [(3, 16, 24 + k) for k in range(4)]
