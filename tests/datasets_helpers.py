"""Helpers for the datasets tests: a tiny deterministic encoder and corpus builders.

The encoder is importable by subprocesses (resume-after-kill, 2-rank gloo) through ``PYTHONPATH=tests``.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class TinyEncoder:
    """images (B,3,H,W) in [0,1] -> (B,16,H/32,W/32): 32x32 average pool, fixed 1x1 mix, tanh*scale.

    Element-wise ops and a K=3 contraction only, so results do not depend on batch composition or
    thread count (bit-stable across processes). ``delay`` sleeps per batch (to kill it mid-run).
    """

    def __init__(self, delay: float = 0.0, scale: float = 3.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(16, 3, generator=g)
        self.b = torch.randn(16, generator=g) * 0.1
        self.delay = delay
        self.scale = scale
        self.device = torch.device("cpu")
        self.calls = 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        p = F.avg_pool2d(x.float(), 32)  # (B,3,h,w)
        y = (p.unsqueeze(1) * self.w.view(1, 16, 3, 1, 1)).sum(2) + self.b.view(1, 16, 1, 1)
        return torch.tanh(y) * self.scale

    def encode_stage_a(self, x: torch.Tensor) -> torch.Tensor:
        p = F.avg_pool2d(x.float(), 4)  # (B,3,H/4,W/4)
        return torch.cat([p, p.mean(1, keepdim=True)], 1) * 2 - 1

    def preview(self, latents: torch.Tensor) -> torch.Tensor:
        x = latents.float()[:, :3].clamp(-1, 1) * 0.5 + 0.5
        return F.interpolate(x, scale_factor=8, mode="nearest")

    def identity(self) -> dict:
        return {"name": "tiny-test-encoder", "sha256": hashlib.sha256(self.w.numpy().tobytes()).hexdigest()}


@functools.lru_cache(maxsize=1)
def photos() -> list[tuple[str, np.ndarray]]:
    """scikit-image's shipped photographs (RGB and grayscale) as uint8 arrays."""
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "coins", "hubble_deep_field"):
        out.append((name, getattr(data, name)()))
    return out


def png_bytes(a: np.ndarray, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_folder(root: Path, n_repeat: int = 1, size: int | None = 160) -> list[str]:
    """Write the photos (resized small for speed) as jpg/png under ``root`` with sidecar captions
    for some. Returns the keys in plan order."""
    root.mkdir(parents=True, exist_ok=True)
    keys = []
    for r in range(n_repeat):
        for i, (name, a) in enumerate(photos()):
            im = Image.fromarray(a)
            if size:
                im.thumbnail((size * 2, size))
            sub = root / f"part{r}"
            sub.mkdir(exist_ok=True)
            ext = "jpg" if i % 2 == 0 else "png"
            im.save(sub / f"{name}.{ext}")
            if i % 3 == 0:
                (sub / f"{name}.txt").write_text(f"a photo of {name}\n")
            elif i % 3 == 1:
                (sub / f"{name}.json").write_text(json.dumps({"caption": f"json {name}"}))
            keys.append(f"part{r}/{name}")
    return sorted(keys)


def make_broken(root: Path) -> dict[str, str]:
    """Deliberately broken files next to a good one. Returns {key: expected reason}."""
    root.mkdir(parents=True, exist_ok=True)
    good = png_bytes(photos()[0][1][::4, ::4])
    jpg = png_bytes(photos()[1][1], "JPEG", quality=90)
    (root / "good.png").write_bytes(good)
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.png").write_bytes(b"this is not an image at all, just some text\n" * 10)
    (root / "cut.jpg").write_bytes(jpg[: len(jpg) // 3])
    (root / "garbage.jpg").write_bytes(jpg[:20] + bytes(range(256)) * 40)
    # a decompression bomb: a tiny PNG whose header says 20000 x 20000
    write_bomb(root / "bomb.png")
    (root / "tiny.png").write_bytes(png_bytes(np.full((8, 8, 3), 128, np.uint8)))
    return {"good": "", "zero": "empty", "text": "not_an_image", "cut": "truncated", "bomb": "decompression_bomb",
            "tiny": "too_small", "garbage": "*"}


def write_bomb(path: Path, side: int = 12000) -> None:
    """A small 1-bit PNG that decodes to ``side`` x ``side`` pixels (exceeds a small max_pixels)."""
    Image.new("1", (side, side)).save(path, format="PNG", optimize=True)


def make_tar(path: Path, items: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tf:
        for key, members in items:
            for ext, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                ti.mtime = 0
                tf.addfile(ti, io.BytesIO(data))


def store_arrays(path) -> dict:
    """Everything a store holds per row (for equality checks)."""
    import zarr

    root = zarr.open_group(str(path), mode="r", use_consolidated=False)
    out = {}
    for gp in root.attrs["groups"]:
        g = root[gp] if gp else root
        for name in ("latents", "keys", "captions", "source", "orig_size", "skip_reason", "status"):
            out[f"{gp}/{name}"] = np.asarray(g[name][:])
        if "stage_a" in g:
            out[f"{gp}/stage_a"] = np.asarray(g["stage_a"][:])
    return out


class SlowEncoder:
    """Any encoder, sleeping ``delay`` s before each batch (to kill a build mid-run); numerics unchanged."""

    def __init__(self, encoder, delay: float):
        self.encoder, self.delay = encoder, delay
        self.device = getattr(encoder, "device", torch.device("cpu"))

    def encode(self, x):
        time.sleep(self.delay)
        return self.encoder.encode(x)

    def identity(self) -> dict:
        return self.encoder.identity()


def real_encoder(weights, resolution: int = 64):
    """The real EfficientNetV2-S encoder of a ``Codec`` (only the effnet loaded), fp32 on CPU."""
    import warnings

    from cascadekit.codec.codec import Codec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Codec.from_pretrained(weights, device="cpu", dtype="fp32", encoder_resolution=resolution,
                                     components=("effnet",))


def main_build(argv: list[str]) -> None:
    """Subprocess entry: ``python -m datasets_helpers OUT DELAY CHUNK INPUT...`` builds with TinyEncoder,
    or with the real effnet of the weights in ``$CK_WEIGHTS`` when that is set."""
    from cascadekit.datasets.builder import build_latent_dataset

    out, delay, chunk, *inputs = argv
    torch.set_num_threads(1)
    weights = os.environ.get("CK_WEIGHTS")
    enc = SlowEncoder(real_encoder(weights), float(delay)) if weights else TinyEncoder(delay=float(delay))
    build_latent_dataset(inputs, out, enc, resolution=64, batch_size=2,
                         chunk_rows=int(chunk), num_workers=0, progress=False)


if __name__ == "__main__":
    main_build(sys.argv[1:])
