"""The LoRA options of `cascadekit sample`: ``--lora FILE`` (repeatable), ``--lora-scale``, ``--lora-token``."""
from __future__ import annotations

from typing import Any, Callable

import click

from cascadekit.cli.params import FINITE


def lora_options(command: Callable) -> Callable:
    """Add ``--lora`` (repeatable), ``--lora-scale`` and ``--lora-token`` (repeatable) to a click command."""
    options = [
        click.option("--lora", "lora", multiple=True, type=click.Path(exists=True, dir_okay=False),
                     help="LoRA file (official lora.safetensors or `cascadekit train` output), merged into Stage C "
                          "and the text encoder; its new tokens (e.g. [fernando]) join the tokenizer. Repeat to "
                          "combine files."),
        click.option("--lora-scale", "lora_scale", default=1.0, show_default=True, type=FINITE,
                     help="With --lora: multiplies every LoRA delta (0 = the base model)."),
        click.option("--lora-token", "lora_token", multiple=True, metavar="TOKEN[=INIT_REGEX]",
                     help="With --lora: the train_tokens of official files that add new tokens, e.g. "
                          "'[fernando]=^dog</w>' (files written by cascadekit carry their own)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def parse_token(spec: str) -> list:
    """``"[fernando]=^dog</w>"`` -> ``["[fernando]", "^dog</w>"]``; ``"ball"`` -> ``["ball", None]``."""
    token, sep, init = spec.partition("=")
    if not token:
        raise click.BadParameter(f"{spec!r}: expected TOKEN or TOKEN=INIT_REGEX", param_hint="'--lora-token'")
    return [token, init if sep else None]


def lora_kwargs(lora: tuple, lora_scale: float, lora_token: tuple) -> dict[str, Any]:
    """The ``TextToImagePipeline.from_pretrained`` keywords of the options; usage errors for stray options."""
    if not lora and lora_token:
        raise click.UsageError("--lora-token needs --lora")
    if not lora and lora_scale != 1.0:
        raise click.UsageError("--lora-scale needs --lora")
    tokens = [parse_token(t) for t in lora_token] or None
    return {"lora": list(lora) or None, "lora_scale": lora_scale, "lora_tokens": tokens}
