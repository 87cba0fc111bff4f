"""Write a clearly labelled RANDOM tiny weight set in the official file layout (for tests and demos).

``write_tiny_weights(dir, seed=0, with_text=True)`` creates::

    dir/
      stage_a.safetensors          StageA 'tiny' preset
      effnet_encoder.safetensors   the real EfficientNetEncoder architecture (EfficientNetV2-S), random
      previewer.safetensors        Previewer 'tiny'
      stage_b_lite.safetensors     StageB 'tiny' (c_clip 32)
      stage_c_lite.safetensors     StageC 'tiny' (clip text/pooled 32, image 24)
      cascadekit.json              constructor kwargs per model, "tiny_random_weights": true, a warning
      text_encoder/ tokenizer/     tiny CLIPTextModelWithProjection (hidden 32, projection 32) + real BPE tokenizer
      image_encoder/               tiny CLIPVisionModelWithProjection (projection 24) + preprocessor_config.json

Every parameter and buffer is drawn from a seeded generator (fan-in scaled normal weights, small
biases, non-zero modulation gammas, BatchNorm statistics with variance in [0.5, 1.5)), so no branch of
a network is trivially zero. Files are byte-identical for the same seed and library versions.
These weights produce meaningless images; ``resolve_source`` warns when it meets them.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import save_file

WARNING = (
    "TINY RANDOM WEIGHTS for tests: every tensor is random noise from a fixed seed. "
    "Outputs are meaningless; do not use for real encoding, decoding or generation."
)

SEED_OFFSETS = {"stage_a": 1, "effnet": 2, "previewer": 3, "stage_b": 4, "stage_c": 5, "text": 6, "image": 7}


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every floating tensor of ``model`` in place with seeded, non-degenerate random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                v = torch.rand(t.shape, generator=g) + 0.5
            elif leaf == "running_mean":
                v = torch.randn(t.shape, generator=g) * 0.1
            elif t.dim() >= 2 and leaf not in ("gamma", "beta"):
                v = torch.randn(t.shape, generator=g) / math.sqrt(max(t[0].numel(), 1))  # ~ 1/sqrt(fan_in)
            elif leaf == "weight":  # norm scales
                v = 1.0 + torch.randn(t.shape, generator=g) * 0.1
            elif leaf == "bias":
                v = torch.randn(t.shape, generator=g) * 0.1
            else:  # gammas / GRN gamma, beta / other vectors
                v = torch.randn(t.shape, generator=g) * 0.3
            t.copy_(v.to(t.dtype))
    return model


def _save(model: torch.nn.Module, path: Path, kind: str) -> None:
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={"cascadekit": f"tiny_random_weights {kind}"})  # one key: safetensors does not keep metadata order


def _tiny_models():
    """(file name, kind, config, model class) of every tiny model."""
    from cascadekit.codec.models.effnet import EfficientNetEncoder, EfficientNetEncoderConfig
    from cascadekit.codec.models.previewer import Previewer, PreviewerConfig
    from cascadekit.codec.models.stage_a import StageA, StageAConfig
    from cascadekit.codec.models.stage_b import StageB, StageBConfig
    from cascadekit.codec.models.stage_c import StageC, StageCConfig

    return [
        ("stage_a.safetensors", "stage_a", StageAConfig.preset("tiny"), StageA),
        ("effnet_encoder.safetensors", "effnet", EfficientNetEncoderConfig.preset("official"), EfficientNetEncoder),
        ("previewer.safetensors", "previewer", PreviewerConfig.preset("tiny"), Previewer),
        ("stage_b_lite.safetensors", "stage_b", StageBConfig.preset("tiny"), StageB),
        ("stage_c_lite.safetensors", "stage_c", StageCConfig.preset("tiny"), StageC),
    ]


def write_tiny_weights(dir: str | os.PathLike, seed: int = 0, with_text: bool = True,
                       models: Iterable[str] | None = None) -> Path:
    """Write the tiny random weight set described in the module docstring into ``dir``; return it.

    ``with_text=False`` skips the CLIP text/image encoders and tokenizer; ``models`` limits the
    networks written (any of ``stage_a, effnet, previewer, stage_b, stage_c``; default all).
    Existing files with the same names are overwritten; nothing outside ``dir`` is touched.
    """
    from cascadekit.codec.weights.tiny_clip import write_image_encoder, write_text_encoder, write_tokenizer

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    chosen = None if models is None else set(models)
    for fname, kind, cfg, cls in _tiny_models():
        if chosen is not None and kind not in chosen:
            continue
        with torch.device("meta"):  # skip the (slow) default init: every tensor is overwritten below
            model = cls.from_config(cfg).eval()
        model = model.to_empty(device="cpu")
        for t in model.buffers():
            if not t.is_floating_point():
                t.zero_()  # num_batches_tracked
        randomize_(model, seed * 100 + SEED_OFFSETS[kind])
        _save(model, out / fname, kind)
        kwargs[kind] = cfg.kwargs()
    if with_text:
        tok = write_tokenizer(out / "tokenizer")
        vocab = json.loads((tok / "vocab.json").read_text(encoding="utf-8"))
        write_text_encoder(out / "text_encoder", len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"],
                           seed=seed * 100 + SEED_OFFSETS["text"])
        write_image_encoder(out / "image_encoder", seed=seed * 100 + SEED_OFFSETS["image"])
    sidecar = {
        "tiny_random_weights": True,
        "warning": WARNING,
        "seed": seed,
        "models": kwargs,
        "clip": {"text_hidden": 32, "text_projection": 32, "image_projection": 24} if with_text else None,
    }
    (out / "cascadekit.json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    (out / "README_TINY_RANDOM_WEIGHTS.txt").write_text(WARNING + "\n")
    return out
