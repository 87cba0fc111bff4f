"""Helpers for the store tests: a small store with every optional array, a fake text encoder, chunk damage,
and a store written the version-1 way. Importable by subprocesses through ``PYTHONPATH=tests``."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import TinyEncoder  # noqa: E402

N, CHUNK = 16, 4


class FakeText:
    """encode(captions) -> ((B,6,4) filled with the caption's number, (B,1,3) twice that); ``delay`` s per call."""

    model = torch.nn.Linear(2, 2)
    source = "fake"
    max_length = 6

    def __init__(self, delay: float = 0.0):
        self.delay, self.calls = delay, 0

    def encode(self, prompts):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        n = torch.tensor([float(p.split()[-1]) + 1 if p else -1.0 for p in prompts])
        return n.view(-1, 1, 1).expand(-1, 6, 4).clone(), (n * 2).view(-1, 1).expand(-1, 3).clone()


def images(n: int = N):
    rng = np.random.default_rng(0)
    return [(f"img{i:03d}", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(n)]


def build(out: Path, captions: bool = True, n: int = N, encoder=None):
    """Encode the test images into ``out`` (chunk 4, latents + Stage A): same arguments every time."""
    from cascadekit.datasets.builder import build_latent_dataset
    from cascadekit.datasets.sources import samples_from_images

    caps = [f"caption {i}" for i in range(n)] if captions else None
    return build_latent_dataset(samples_from_images(images(n), captions=caps), out, encoder or TinyEncoder(),
                                resolution=64, batch_size=2, chunk_rows=CHUNK, num_workers=0, progress=False,
                                spaces=("semantic", "stage_a"))


def full_store(out: Path) -> Path:
    """A complete store with latents, stage_a and text embeddings."""
    from cascadekit.datasets.text_embeddings import add_text_embeddings

    build(out)
    add_text_embeddings(out, FakeText(), batch_size=3, progress=False)
    return out


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def chunk_file(store: Path, array: str, chunk: int, group: str = "") -> Path:
    from cascadekit.datasets import integrity
    from cascadekit.datasets import store as S

    g = S.sample_group(S.open_store(store), group)
    return integrity.chunk_file(g[array], chunk)


def flip_byte(path: Path, at: int = 10) -> None:
    b = bytearray(path.read_bytes())
    b[min(at, len(b) - 1)] ^= 0xFF
    path.write_bytes(bytes(b))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def write_v1_store(out: Path, latents: np.ndarray, captions: list[str], status: np.ndarray, chunk: int = CHUNK):
    """A store as cascadekit wrote format version 1: zstd only (no checksum), dimension names ``channel``/``y``/
    ``x`` shared by every array, chunks holding only fill values not written."""
    import zarr
    from zarr.codecs import ZstdCodec

    n = len(status)
    root = zarr.open_group(str(out), mode="w-", zarr_format=3)
    comp = ZstdCodec(level=3)

    def arr(name, shape, chunks, dtype, fill, dims):
        return root.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=comp, fill_value=fill,
                                 dimension_names=dims)

    arr("latents", latents.shape, (chunk, *latents.shape[1:]), "float16", 0, ("sample", "channel", "y", "x"))
    for name in ("keys", "captions", "source", "skip_reason"):
        arr(name, (n,), (chunk,), str, "", ("sample",))
    arr("orig_size", (n, 2), (chunk, 2), "int32", 0, ("sample", "hw"))
    arr("status", (n,), (chunk,), "uint8", 0, ("sample",))
    root["latents"][:] = latents.astype(np.float16)
    root["keys"][:] = np.array([f"k{i}" for i in range(n)])
    root["captions"][:] = np.array(captions)
    root["source"][:] = np.array([f"/data/{i}.png" for i in range(n)])
    root["orig_size"][:] = np.full((n, 2), 64, np.int32)
    root["status"][:] = status
    root.attrs.update({"format": "cascadekit.latent-dataset", "format_version": 1, "chunk_rows": chunk,
                       "dtype": "float16", "groups": [""], "complete": True, "initializing": False,
                       "n": n, "latent_shape": list(latents.shape[1:]), "stage_a_shape": None})
    return out


def main_embed(argv: list[str]) -> None:
    """Subprocess entry: ``python -m store_helpers STORE DELAY`` embeds the store with a slow FakeText."""
    from cascadekit.datasets.text_embeddings import add_text_embeddings

    store, delay = argv
    add_text_embeddings(store, FakeText(float(delay)), batch_size=1, progress=False, overwrite=True)


if __name__ == "__main__":
    main_embed(sys.argv[1:])
