"""Helpers for the generator tests: tiny latent stores written through the datasets store API.

Importable by subprocesses (the 2-process DDP test) through ``PYTHONPATH=tests``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY = dict(c_text=32, c_pooled=32, c_img=24, tokens=77)


def structured_latents(n: int, h: int = 4, w: int = 4, seed: int = 0, c: int = 16) -> torch.Tensor:
    """Learnable latents: a few smooth per-sample patterns (unit scale)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(4, c, 1, 1, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    pats = []
    for i in range(n):
        k = i % 4
        pats.append(base[k] * (1 + 0.5 * (xx if k % 2 else yy)))
    return torch.stack(pats).float()


def write_store(path: Path, groups: dict[str, torch.Tensor], captions: dict[str, list[str]] | None = None,
                embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, chunk_rows: int = 4,
                dtype: str = "float32") -> Path:
    """A complete store with sample groups ``{"": latents}`` or ``{"buckets/AxB": latents, ...}``.

    captions: per group (default "caption <i>"); embeddings: per group (clip_text, clip_text_pooled)
    written as the `embed-text` arrays (+ text_status ok).
    """
    from cascadekit.datasets import store as S

    layouts = [S.GroupLayout(gp, int(x.shape[0]), tuple(int(s) for s in x.shape[1:])) for gp, x in groups.items()]
    root = S.create_store(path, layouts, chunk_rows=chunk_rows, dtype=dtype, attrs={})
    for gp, x in groups.items():
        g = S.sample_group(root, gp)
        n = x.shape[0]
        caps = (captions or {}).get(gp, [f"caption {i}" for i in range(n)])
        # like cascadekit's writers, every chunk of every per-row array gets a file (also an all-fill one):
        # the format-version-2 rule `inspect --verify` checks
        columns = {"latents": x.numpy().astype(dtype), "captions": np.asarray(caps, dtype=object).astype(str),
                   "keys": np.asarray([f"k{i}" for i in range(n)]).astype(str),
                   "source": np.full(n, ""), "skip_reason": np.full(n, ""), "orig_size": np.zeros((n, 2), np.int32)}
        if embeddings and gp in embeddings:
            t, p = embeddings[gp]
            for name, v in (("clip_text", t), ("clip_text_pooled", p)):
                S.create_row_array(g, name, tuple(v.shape), (chunk_rows, *v.shape[1:]), "float16", 0)
                columns[name] = v.numpy().astype(np.float16)
            S.create_row_array(g, "text_status", (n,), (chunk_rows,), "uint8", 0)
            columns["text_status"] = np.full(n, S.STATUS_OK, np.uint8)
        columns["status"] = np.full(n, S.STATUS_OK, np.uint8)  # last, as the writers do
        for name, v in columns.items():
            S.writable(g[name])[:] = v
    S.finalize_store(path)
    return path


def random_embeddings(n: int, seed: int = 1, tokens: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, tokens, TINY["c_text"], generator=g).half().float(),
            torch.randn(n, 1, TINY["c_pooled"], generator=g).half().float())


def tiny_store(path: Path, n: int = 8, h: int = 4, w: int = 4, nan_row: int | None = None) -> Path:
    """Store with structured latents, captions and tiny (32-wide) text embeddings in one group."""
    lat = structured_latents(n, h, w)
    if nan_row is not None:
        lat[nan_row] = float("nan")
    return write_store(path, {"": lat}, embeddings={"": random_embeddings(n)})


class FixedEmpty:
    """Stand-in text encoder for stores with embeddings: ``encode`` returns fixed embeddings."""

    def __init__(self, tokens: int = 8):
        g = torch.Generator().manual_seed(99)
        self.t = torch.randn(1, tokens, TINY["c_text"], generator=g)
        self.p = torch.randn(1, 1, TINY["c_pooled"], generator=g)

    def encode(self, prompts):
        n = len(prompts)
        return self.t.expand(n, -1, -1).clone(), self.p.expand(n, -1, -1).clone()


def ddp_worker(rank: int, world: int, port: int, store, out: str, cfg: dict, overrides: dict) -> None:
    """One process of a CPU (gloo) DDP training run (started by the DDP test); store: path or TrainData."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from cascadekit.generator.config import TrainConfig
    from cascadekit.generator.train import train

    train(store, TrainConfig.from_dict(cfg), out, device="cpu", text_encoder=FixedEmpty(), model_overrides=overrides,
          log=lambda m: None)


def assert_same_training_log(single_dir: Path, other_dir: Path, steps: int = 3) -> None:
    """A distributed run logged the single-process run's losses and gradient norms, step by step, and the
    gradients were not zero (training really moved the weights)."""
    import json

    la = [json.loads(x) for x in (Path(single_dir) / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (Path(other_dir) / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, steps + 1))
    for ra, rb in zip(la, lb):
        assert abs(ra["loss"] - rb["loss"]) < 1e-5 and abs(ra["grad_norm"] - rb["grad_norm"]) < 1e-4 * ra["grad_norm"]
        assert ra["grad_norm"] > 0


def tiny_stage_c(seed: int = 0, **overrides):
    """A tiny Stage C (config overrides allowed) in eval mode with a non-zero output conv (seeded)."""
    from cascadekit.generator.stage_c import StageC, StageCConfig

    torch.manual_seed(seed)
    m = StageC.from_config(StageCConfig(**{**StageCConfig.preset("tiny").kwargs(), **overrides})).eval()
    with torch.no_grad():
        m.clf[1].weight.normal_(0, 0.1)  # official init zeroes the output conv: make outputs non-trivial
    return m


def stage_c_inputs(seed: int = 1):
    """(x (2,16,4,4), r (2,), clip_text (2,8,32), clip_text_pooled (2,1,32), clip_img (2,1,24)) for tiny_stage_c."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 16, 4, 4, generator=g), torch.rand(2, generator=g), torch.randn(2, 8, 32, generator=g),
            torch.randn(2, 1, 32, generator=g), torch.randn(2, 1, 24, generator=g))
