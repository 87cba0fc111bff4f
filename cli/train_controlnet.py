"""`cascadekit train --config controlnet_*`: the ControlNet run of the train command (see docs/controlnet.md)."""
from __future__ import annotations

import dataclasses

import click

from cascadekit.cli.common import default_dtype, pick_device


def run_controlnet(data, cfg, out, init, resume, text_encoder, image_encoder, device, overrides) -> None:
    """Load the optional encoders and train (``cfg``: a ControlNetTrainConfig; ``overrides``: --set items)."""
    from cascadekit.generator.tasks.controlnet_config import ControlNetTrainConfig
    from cascadekit.generator.train_controlnet import train_controlnet
    from cascadekit.generator.training.settings import parse_overrides

    if overrides:
        d = dataclasses.asdict(cfg)
        d["adam_betas"] = list(d["adam_betas"])
        cfg = ControlNetTrainConfig.from_dict({**d, **parse_overrides(overrides, "--set")})
    dev = pick_device(device)
    te = None
    if text_encoder is not None:
        from cascadekit.codec.text import TextEncoder

        te = TextEncoder.from_pretrained(text_encoder, device=dev)
    enc = None
    if image_encoder is not None:
        from cascadekit.codec.codec import Codec

        enc = Codec.from_pretrained(image_encoder, device=dev, dtype=default_dtype(None, dev), components=("effnet",))
    res = train_controlnet(data, cfg, out, init=init, resume=resume, device=device, text_encoder=te,
                           image_encoder=enc, log=click.echo)
    click.echo(f"done: step {res.step}, last checkpoint {res.last_checkpoint} (controlnet.safetensors)")
