"""`cascadekit train` with a Stage B config (``finetune_b_lite``, ``finetune_b_big`` or a file with ``task: stage_b``)."""
from __future__ import annotations

from pathlib import Path

import click

from cascadekit.cli.common import default_dtype, pick_device


def is_stage_b(config: str) -> bool:
    """Whether ``--config`` names a Stage B preset or a config file that says ``task: stage_b``."""
    from cascadekit.generator.tasks.stage_b_config import is_stage_b_config
    from cascadekit.generator.training.settings import _parse_file  # the one config-file parser (YAML 1.2/JSON/TOML)

    if str(config).startswith("finetune_b_") and not Path(config).exists():
        return True
    p = Path(config)
    return p.is_file() and is_stage_b_config(_parse_file(p))


def run_stage_b(data, config, out, init, resume, text_encoder, device, overrides, *, image_encoder=None,
                on_the_fly_effnet: bool = False) -> None:
    """Load the Stage B config (+ ``--set``, ``--on-the-fly-effnet``), the encoders it needs, train, say where the
    checkpoint is."""
    import dataclasses

    from cascadekit.generator.tasks.stage_b_config import StageBTrainConfig
    from cascadekit.generator.train_stage_b import train_stage_b
    from cascadekit.generator.training.settings import parse_overrides

    cfg = StageBTrainConfig.from_file(config)
    if overrides:
        cfg = StageBTrainConfig.from_dict({**dataclasses.asdict(cfg), **parse_overrides(overrides, "--set")})
    if on_the_fly_effnet:
        cfg = StageBTrainConfig.from_dict({**dataclasses.asdict(cfg), "on_the_fly_effnet": True})
    te = None
    if text_encoder is not None:
        from cascadekit.codec.text import TextEncoder

        te = TextEncoder.from_pretrained(text_encoder, device=pick_device(device))
    enc = _effnet(image_encoder or init, device) if cfg.on_the_fly_effnet else None
    res = train_stage_b(data, cfg, out, init=init, resume=resume, device=device, text_encoder=te, image_encoder=enc,
                        log=click.echo)
    click.echo(f"done: step {res.step}, last checkpoint {res.last_checkpoint} "
               f"(use it with --stage-b-weights {Path(out)})")


def _effnet(weights, device):
    """The EfficientNet of ``weights`` (--image-encoder, else --init) as the ControlNet runs load it; None without
    weights (the task then says what to pass)."""
    if weights is None:
        return None
    from cascadekit.codec.codec import Codec

    dev = pick_device(device)
    return Codec.from_pretrained(weights, device=dev, dtype=default_dtype(None, dev), components=("effnet",))
