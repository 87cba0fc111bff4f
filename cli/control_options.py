"""The ControlNet options of `cascadekit sample` (``--control``, ``--control-image``, ``--mask`` / ``--outpaint``,
``--control-strength``, ``--controlnet``, ``--paste-back``) and their checks, all before any weights load."""
from __future__ import annotations

from typing import Any, Callable

import click

from cascadekit.cli.params import FiniteFloat

CONTROL_CHOICES = ("canny", "inpainting", "sr")


def control_options(command: Callable) -> Callable:
    """Add the ControlNet options to a click command."""
    options = [
        click.option("--control", "control", default=None, type=click.Choice(CONTROL_CHOICES),
                     help="Steer Stage C with a ControlNet: canny edges, inpainting/outpainting, or sr (2x "
                          "super-resolution; `cascadekit upscale` is the short form)."),
        click.option("--control-image", "control_image", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="With --control: the image the control is computed from (fitted to --height x --width)."),
        click.option("--mask", "mask", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="With --control inpainting: mask image of the control image's size, white = repaint."),
        click.option("--outpaint", is_flag=True, help="With --control inpainting: repaint a border instead of a mask."),
        click.option("--paste-back", "paste_back", is_flag=True,
                     help="With --control inpainting: keep the unmasked pixels of the control image exactly."),
        click.option("--control-strength", "control_strength", default=1.0, show_default=True,
                     type=FiniteFloat(min=0, max=10), help="ControlNet output multiplier (official 1.0)."),
        click.option("--controlnet", "controlnet", default=None,
                     help="ControlNet file, folder (with controlnet/<name>.safetensors), hub id or a ControlNet training run (default: the "
                          "controlnet/ folder of --weights)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def control_settings(control: str | None, control_image: str | None, mask: str | None, outpaint: bool,
                     paste_back: bool, control_strength: float):
    """A checked :class:`ControlSettings` (images decoded now, so a corrupt file fails before weights load), or None."""
    inpaint_only = {"--mask": mask is not None, "--outpaint": outpaint, "--paste-back": paste_back}
    if control is None:
        stray = [flag for flag, given in {"--control-image": control_image is not None, **inpaint_only}.items() if given]
        if stray or control_strength != 1.0:
            raise click.UsageError(f"{', '.join(stray) or '--control-strength'} needs --control")
        return None
    if control_image is None:
        raise click.UsageError(f"--control {control} needs --control-image IMG")
    if control != "inpainting" and any(inpaint_only.values()):
        given = [flag for flag, on in inpaint_only.items() if on]
        raise click.UsageError(f"{', '.join(given)} only apply to --control inpainting")
    if control == "inpainting" and (mask is None) == (not outpaint):
        raise click.UsageError("--control inpainting needs exactly one of --mask M or --outpaint")
    from cascadekit.codec.images import load_image
    from cascadekit.generator.control_sampling import ControlSettings
    from cascadekit.generator.controls import load_mask

    image = load_image(control_image)
    settings = ControlSettings(control, image, mask=None, outpaint=outpaint, strength=control_strength,
                               paste_back=paste_back)
    if mask is not None:
        load_mask(mask, size=(image.height, image.width))  # the size check, before any weights load
        settings.mask = mask
    settings.check()
    return settings


def controlnet_source(controlnet: str | None, weights: Any) -> Any:
    """Where the ControlNet comes from: --controlnet (a ControlNet training run: its newest intact checkpoint's
    controlnet.safetensors), else the --weights source (its controlnet/ folder)."""
    from cascadekit.generator.controlnet_runs import controlnet_file_of

    return controlnet_file_of(controlnet) if controlnet is not None else weights


def precheck_controlnet(source: Any, control: str, weights: Any, stage_c: str) -> None:
    """Refuse a ControlNet that does not fit the Stage C of --weights / --stage-c from the file headers alone,
    before any weights load (a meta-device Stage C and the ControlNet's header config)."""
    import warnings

    import torch

    from cascadekit.codec.models.stage_c import StageC
    from cascadekit.codec.weights.components import component_config
    from cascadekit.codec.weights.controlnet import check_fits_stage_c, read_controlnet_config
    from cascadekit.codec.weights.sources import resolve_source

    info = read_controlnet_config(source, control)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny-weights warning is said once, when the weights load
        ws = resolve_source(weights, stage_c=stage_c, need=("stage_c",))
    cfg, _ = component_config(ws, "stage_c", stage_c)
    with torch.device("meta"):
        meta_stage_c = StageC.from_config(cfg)
    check_fits_stage_c(info.config, meta_stage_c, where=f"ControlNet {info.path}")
