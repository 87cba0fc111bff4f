"""`cascadekit train`: train Stage C on a latent store (single process, or torchrun for DDP/FSDP)."""
from __future__ import annotations

import click

from cascadekit.cli.common import pick_device, reports_user_errors
from cascadekit.cli.params import DEVICE, OUT_FOLDER, STORE_DATA


@click.command("train")
@click.option("--data", "data", required=True, type=STORE_DATA, help="Latent store (STORE.zarr or an s3://... URL) from `cascadekit encode`.")
@click.option("--config", "config", required=True,
              help="Training config (.yaml/.json/.toml) or a preset name: finetune_c_lite, finetune_c_big, lora_c_big, tiny; "
                   "Stage B: finetune_b_lite, finetune_b_big (or a file with task: stage_b, e.g. preset: tiny); "
                   "ControlNet: controlnet_canny, controlnet_inpainting, controlnet_sr (or a file with task: controlnet).")
@click.option("--out", "out", required=True, type=OUT_FOLDER, help="Run folder: checkpoints/, previews/, train_log.jsonl.")
@click.option("--init", "init", default=None, help="Stage C weights to fine-tune (file, folder, diffusers snapshot, hub id); required for LoRA.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest intact checkpoint (exactly); an error if it has none.")
@click.option("--text-encoder", "text_encoder", default=None,
              help="Folder with text_encoder/ + tokenizer/ (CLIP ViT-bigG): needed if the store has no text embeddings.")
@click.option("--previewer", "previewer", default=None, help="Weights folder with previewer.safetensors, for PNG previews.")
@click.option("--image-encoder", "image_encoder", default=None,
              help="ControlNet runs: weights with the EfficientNet encoder, for an sr control the store lacks (computed "
                   "on the fly) and the Stable Cascade start of an effnet backbone.")
@click.option("--on-the-fly-effnet", "on_the_fly_effnet", is_flag=True,
              help="Stage B runs: recompute the EfficientNet condition every step at f ~ U(0.5, 1) per sample (official "
                   "train_b) from the store's crop pixels (--controls inpaint), with the EfficientNet of --image-encoder "
                   "(default: --init); instead of the stored latents / scales.")
@click.option("--device", default=None, type=DEVICE, help="cpu, cuda ... (default: cuda:LOCAL_RANK if available).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (YAML syntax), e.g. --set steps=100.")
@reports_user_errors
def train(data, config, out, init, resume, text_encoder, previewer, image_encoder, on_the_fly_effnet, device, overrides):
    """Train the Stage C prior on precomputed latents (no image encoder in the loop).

    Multi-GPU: torchrun --nproc-per-node N -m cascadekit.cli train ...
    """
    from cascadekit.cli.train_stage_b import is_stage_b, run_stage_b
    from cascadekit.generator.tasks.controlnet_config import controlnet_config_of

    if is_stage_b(config):  # Stage B fine-tuning: its own task and config (cli/train_stage_b.py)
        return run_stage_b(data, config, out, init, resume, text_encoder, device, overrides,
                           image_encoder=image_encoder, on_the_fly_effnet=on_the_fly_effnet)
    if on_the_fly_effnet:
        raise click.UsageError("--on-the-fly-effnet is a Stage B option (--config finetune_b_* or a task: stage_b file)")
    cn = controlnet_config_of(config)
    if cn is not None:  # a ControlNet for a frozen Stage C: its own task and config (cli/train_controlnet.py)
        from cascadekit.cli.train_controlnet import run_controlnet

        return run_controlnet(data, cn, out, init, resume, text_encoder, image_encoder, device, overrides)
    _run(data, config, out, init, resume, text_encoder, previewer, device, overrides)


def _run(data, config, out, init, resume, text_encoder, previewer, device, overrides):
    import dataclasses

    from cascadekit.generator.config import TrainConfig
    from cascadekit.generator.train import train as run_training
    from cascadekit.generator.training.settings import parse_overrides

    cfg = TrainConfig.from_file(config)
    if overrides:
        cfg = TrainConfig.from_dict({**dataclasses.asdict(cfg), **parse_overrides(overrides, "--set")})
    te = None
    if text_encoder is not None:
        from cascadekit.codec.text import TextEncoder

        te = TextEncoder.from_pretrained(text_encoder, device=pick_device(device))
    prev = None
    if previewer is not None:
        from cascadekit.codec.weights.components import load_component
        from cascadekit.codec.weights.sources import resolve_source

        prev, _ = load_component(resolve_source(previewer, need=("previewer",)), "previewer",
                                 device=pick_device(device))
    res = run_training(data, cfg, out, init=init, resume=resume, device=device, text_encoder=te, previewer=prev,
                       log=click.echo)
    click.echo(f"done: step {res.step}, last checkpoint {res.last_checkpoint}")
