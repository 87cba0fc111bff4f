"""Helpers for the ControlNet training tests: a tiny image folder, its store (with / without precomputed controls),
a fake text encoder, and one process of a 2-process DDP run (importable by subprocesses via ``PYTHONPATH=tests``)."""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import TinyEncoder  # noqa: E402
from generator_helpers import TINY, FixedEmpty  # noqa: E402

SIDE = 64  # crop side: latents 16x2x2


def block_images(folder: Path, n: int = 16, seed: int = 0, caption: str | None = None, blocks: int = 2) -> Path:
    """``n`` PNGs of 2x2 uniformly coloured blocks (random colours): latents and controls differ per image.
    Captions "caption <i>", or ``caption`` for all (then the text says nothing about which image it is);
    ``blocks=1``: one colour per image."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        colours = rng.integers(0, 256, (blocks, blocks, 3), dtype=np.uint8)
        img = np.kron(colours, np.ones((SIDE // blocks, SIDE // blocks, 1), np.uint8))
        Image.fromarray(img).save(folder / f"img{i:03d}.png")
        (folder / f"img{i:03d}.txt").write_text(caption if caption is not None else f"caption {i}")
    return folder


class TinyText:
    """encode(captions) -> ((B,8,32), (B,1,32)): fixed random embeddings per caption number (tiny Stage C widths)."""

    model = torch.nn.Linear(2, 2)
    source = "tiny-text"
    max_length = 8

    def encode(self, prompts):
        out_t, out_p = [], []
        for p in prompts:
            g = torch.Generator().manual_seed(zlib.crc32(p.strip().encode()))
            out_t.append(torch.randn(1, 8, TINY["c_text"], generator=g))
            out_p.append(torch.randn(1, 1, TINY["c_pooled"], generator=g))
        return torch.cat(out_t), torch.cat(out_p)


class SpreadEncoder(TinyEncoder):
    """TinyEncoder without the tanh, centred and scaled: latents vary strongly between images (std ~2), so knowing
    the image (the control) is worth something to a noise predictor."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.nn.functional.avg_pool2d(x.float(), 32) - 0.5
        return (p.unsqueeze(1) * self.w.view(1, 16, 3, 1, 1)).sum(2) * 4

    def identity(self) -> dict:
        return {**super().identity(), "name": "spread-test-encoder"}


def make_store(out: Path, images: Path, controls=("canny", "sr", "inpaint")) -> Path:
    """Encode ``images`` (SpreadEncoder, chunk 4) with ``controls`` precomputed, then text embeddings."""
    from cascadekit.datasets.builder import build_latent_dataset
    from cascadekit.datasets.text_embeddings import add_text_embeddings

    build_latent_dataset([str(images)], out, SpreadEncoder(), resolution=SIDE, batch_size=4, chunk_rows=4,
                         num_workers=0, progress=False, controls=controls)
    add_text_embeddings(out, TinyText(), batch_size=4, progress=False)
    return out


def stage_c_file(folder: Path, seed: int = 0) -> Path:
    """A tiny Stage C with the official init except its output conv (zero there, which would block every gradient
    to a ControlNet), which gets small random weights; written as an official-key file."""
    from safetensors.torch import save_file

    from cascadekit.generator.stage_c import StageC, StageCConfig

    torch.manual_seed(seed)
    model = StageC.from_config(StageCConfig.preset("tiny"))
    with torch.no_grad():
        w = model.clf[1].weight
        w.copy_(torch.randn_like(w) * 0.05 / w[0].numel() ** 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "stage_c.safetensors"))
    return folder / "stage_c.safetensors"


def config(control: str = "inpainting", **kw):
    """A tiny ControlNet config (simple bottleneck, fast on CPU) on the official preset of ``control``."""
    from cascadekit.generator.tasks.controlnet_config import ControlNetTrainConfig

    base = dict(preset=f"controlnet_{control}", model="tiny", batch_size=8, steps=6, lr=2e-3, warmup_steps=1,
                save_every=3, log_every=1, bottleneck_mode="simple" if control != "sr" else "large",
                large_widths=[16, 16, 16], precision="fp32")
    return ControlNetTrainConfig.from_dict({**base, **kw})


def ddp_worker(rank: int, world: int, port: int, store: str, out: str, cfg: dict, init: str) -> None:
    """One process of a CPU (gloo) DDP ControlNet run."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from cascadekit.generator.tasks.controlnet_config import ControlNetTrainConfig
    from cascadekit.generator.train_controlnet import train_controlnet

    train_controlnet(store, ControlNetTrainConfig.from_dict(cfg), out, init=init, device="cpu", text_encoder=FixedEmpty(),
                     log=lambda m: None)
