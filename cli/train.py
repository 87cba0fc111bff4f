"""`cascadekit train`: train Stage C on a latent store (single process, or torchrun for DDP/FSDP)."""
from __future__ import annotations

import sys

import click

from cascadekit.codec.errors import CascadeKitError


@click.command("train")
@click.option("--data", "data", required=True, type=click.Path(), help="Latent store (STORE.zarr) from `cascadekit encode`.")
@click.option("--config", "config", required=True,
              help="Training config (.yaml/.json/.toml) or a preset name: finetune_c_lite, finetune_c_big, lora_c_big, tiny.")
@click.option("--out", "out", required=True, type=click.Path(), help="Run folder: checkpoints/, previews/, train_log.jsonl.")
@click.option("--init", "init", default=None, help="Stage C weights to fine-tune (file, folder, diffusers snapshot, hub id); required for LoRA.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint (exactly).")
@click.option("--text-encoder", "text_encoder", default=None,
              help="Folder with text_encoder/ + tokenizer/ (CLIP ViT-bigG): needed if the store has no text embeddings.")
@click.option("--previewer", "previewer", default=None, help="Weights folder with previewer.safetensors, for PNG previews.")
@click.option("--device", default=None, help="cpu, cuda ... (default: cuda:LOCAL_RANK if available).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (YAML syntax), e.g. --set steps=100.")
def train(data, config, out, init, resume, text_encoder, previewer, device, overrides):
    """Train the Stage C prior on precomputed latents (no image encoder in the loop).

    Multi-GPU: torchrun --nproc-per-node N -m cascadekit.cli train ...
    """
    try:
        _run(data, config, out, init, resume, text_encoder, previewer, device, overrides)
    except CascadeKitError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


def _run(data, config, out, init, resume, text_encoder, previewer, device, overrides):
    import dataclasses

    from cascadekit.codec.errors import InputError
    from cascadekit.generator.config import TrainConfig, yaml_value
    from cascadekit.generator.train import train as run_training

    cfg = TrainConfig.from_file(config)
    if overrides:
        upd = {}
        for item in overrides:
            if "=" not in item:
                raise InputError(f"--set expects KEY=VALUE, got {item!r}")
            k, v = item.split("=", 1)
            upd[k.strip()] = yaml_value(v)
        cfg = TrainConfig.from_dict({**dataclasses.asdict(cfg), **upd})
    te = None
    if text_encoder is not None:
        from cascadekit.codec.text import TextEncoder

        te = TextEncoder.from_pretrained(text_encoder, device=_device(device))
    prev = None
    if previewer is not None:
        prev = _load_previewer(previewer, device)
    res = run_training(data, cfg, out, init=init, resume=resume, device=device, text_encoder=te, previewer=prev,
                       log=click.echo)
    click.echo(f"done: step {res.step}, last checkpoint {res.last_checkpoint}")


def _load_previewer(source, device):
    from cascadekit.codec.models.previewer import Previewer, PreviewerConfig
    from cascadekit.codec.weights.assign import build
    from cascadekit.codec.weights.load import load_weights
    from cascadekit.codec.weights.sources import resolve_source

    ws = resolve_source(source, need=("previewer",))
    kwargs = ws.model_kwargs.get("previewer") or PreviewerConfig.preset("official").kwargs()
    return build(lambda: Previewer(**kwargs), load_weights(ws.path("previewer")), device=_device(device),
                 name="Previewer")


def _device(name):
    """--device, else cuda:LOCAL_RANK when CUDA is available, else cpu (same rule as the trainer)."""
    import os

    import torch

    if name:
        return torch.device(name)
    local = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
