"""`cascadekit upscale IMG --out DIR`: 2× super-resolution with the official SR ControlNet (notebook settings)."""
from __future__ import annotations

import click

from cascadekit.cli.common import default_dtype, pick_device, pick_weights, reports_user_errors
from cascadekit.cli.control_options import controlnet_source, precheck_controlnet
from cascadekit.cli.out_folder import OutputKind, claim_out_folder
from cascadekit.cli.params import DEVICE, FINITE, OUT_FOLDER, SEED, STEPS, FiniteFloat, check_pixel_budget

UPSCALE = OutputKind("upscale", "samples.json", ("upscaled_*.png", "grid.png"))


@click.command("upscale")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", required=True, type=OUT_FOLDER, help="Folder for the 2x image, its control image "
              "(<name>_control.png: the input, nearest-upscaled), grid.png and samples.json.")
@click.option("--overwrite", is_flag=True, help="Remove the outputs of an earlier `upscale` run in --out first.")
@click.option("--prompt", default="", help="Optional caption of the image (the notebook leaves it to the user).")
@click.option("--weights", default=None, help="Weights folder / snapshot / hub id (default: the tiny random test weights).")
@click.option("--controlnet", default=None, help="SR ControlNet file / folder / hub id (default: the controlnet/ "
              "folder of --weights, file super_resolution.safetensors).")
@click.option("--steps", default=20, show_default=True, type=STEPS, help="Stage C sampling steps.")
@click.option("--guidance", default=1.0, show_default=True, type=FINITE, help="Stage C guidance (notebook: 1).")
@click.option("--control-strength", default=1.0, show_default=True, type=FiniteFloat(min=0, max=10))
@click.option("--decoder-steps", default=10, show_default=True, type=STEPS, help="Stage B sampling steps.")
@click.option("--seed", default=None, type=SEED, help="Seed (default: random, written into the PNG).")
@click.option("--stage-c", "stage_c", default="lite", show_default=True, type=click.Choice(["lite", "big"]),
              help="Stage C size; the official SR ControlNet is for 'big'.")
@click.option("--stage-b", "stage_b", default="lite", show_default=True, type=click.Choice(["lite", "big"]))
@click.option("--dtype", default=None, type=click.Choice(["fp32", "bf16", "fp16"]))
@click.option("--device", default=None, type=DEVICE)
@reports_user_errors
def upscale(image, out, overwrite, prompt, weights, controlnet, steps, guidance, control_strength, decoder_steps,
            seed, stage_c, stage_b, dtype, device):
    """Write IMAGE at twice its size (Stage C steered by the super-resolution ControlNet, then Stage B/A)."""
    import warnings

    from cascadekit.codec.images import load_image
    from cascadekit.generator.pipeline import TextToImagePipeline

    img = load_image(image)  # a corrupt file fails here, before any weights load
    check_pixel_budget(2 * img.height, 2 * img.width, "2 x IMAGE")
    claim_out_folder(out, UPSCALE, overwrite)
    dev = pick_device(device)
    weights, _, tiny = pick_weights(weights, stage_b=stage_b)
    controlnet = controlnet_source(controlnet, weights)  # a training run: its newest intact checkpoint
    precheck_controlnet(controlnet, "sr", weights, stage_c)  # from the headers, before any weights load
    with warnings.catch_warnings():
        if tiny:
            warnings.simplefilter("ignore")
        pipe = TextToImagePipeline.from_pretrained(weights, device=dev, dtype=default_dtype(dtype, dev),
                                                   stage_c=stage_c, stage_b=stage_b)
        pipe.load_controlnet(controlnet, "sr")
    res = pipe.upscale(img, prompt, seed=seed, prior_steps=steps, prior_guidance=guidance,
                       control_strength=control_strength, decoder_steps=decoder_steps)
    files = res.write(out, prefix="upscaled")
    for p in files.images:
        click.echo(str(p))
    if pipe.tiny:
        click.echo("note: generated with TINY RANDOM WEIGHTS: the images are meaningless", err=True)
