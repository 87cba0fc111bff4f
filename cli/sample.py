"""`cascadekit sample`: text-to-image (Stage C -> Stage B -> Stage A) with the official notebook defaults."""
from __future__ import annotations

import click
from click.core import ParameterSource

from cascadekit.cli.common import default_dtype, pick_device, pick_weights, reports_user_errors
from cascadekit.cli.offload_options import offload_option, picked_offload, report_peak, reset_peak
from cascadekit.cli.out_folder import SAMPLE, claim_out_folder
from cascadekit.cli.params import (COUNT, DEVICE, FINITE, OUT_FOLDER, SEED, STEPS, FiniteFloat, PixelSide,
                                   check_pixel_budget)

SIDE = PixelSide(multiple=1, minimum=32)


@click.command("sample")
@click.argument("prompts", nargs=-1)
@click.option("--weights", default=None, help="Weights folder / diffusers snapshot(s) / hub id (default: the tiny random test weights, clearly labelled).")
@click.option("--out", "out", required=True, type=OUT_FOLDER, help="Folder for the PNGs (generation parameters in their metadata), grid.png and samples.json. A folder with an earlier run's outputs needs --overwrite.")
@click.option("--overwrite", is_flag=True, help="Remove the outputs of an earlier `sample` run in --out first.")
@click.option("--negative", default=None, help="Negative prompt (default: the empty caption, as released).")
@click.option("--steps", default=20, show_default=True, type=STEPS, help="Stage C sampling steps.")
@click.option("--guidance", default=4.0, show_default=True, type=FINITE, help="Stage C classifier-free guidance.")
@click.option("--shift", default=2.0, show_default=True, type=FiniteFloat(min=0, min_open=True), help="Stage C schedule shift (> 0).")
@click.option("--decoder-steps", default=10, show_default=True, type=STEPS, help="Stage B sampling steps.")
@click.option("--decoder-guidance", default=1.1, show_default=True, type=FINITE, help="Stage B guidance.")
@click.option("--seed", default=None, type=SEED, help="Seed, 0 <= seed < 2**63 (default: random, written into the PNGs).")
@click.option("--n", "n", default=1, show_default=True, type=COUNT, help="Images per prompt.")
@click.option("--height", default=1024, show_default=True, type=SIDE, help="Image height in pixels (>= 32).")
@click.option("--width", default=1024, show_default=True, type=SIDE, help="Image width in pixels (>= 32).")
@click.option("--image", "image", default=None, type=click.Path(exists=True, dir_okay=False), help="Image variation: condition on this image's CLIP embedding.")
@click.option("--init-image", default=None, type=click.Path(exists=True, dir_okay=False), help="Image-to-image: start from this image.")
@click.option("--strength", default=0.8, show_default=True, type=FiniteFloat(min=0, max=1, min_open=True), help="With --init-image: image-to-image noise level (0, 1]: 1 ignores the image.")
@click.option("--lora", default=None, type=click.Path(exists=True, dir_okay=False), help="LoRA file from `cascadekit train` (merged into Stage C).")
@click.option("--stage-c-weights", "stage_c_weights", default=None, type=click.Path(exists=True),
              help="Stage C weights to use instead of those in --weights: a `cascadekit train` run folder or "
                   "checkpoint (RUN/checkpoints/step_N), or a Stage C file / prior folder.")
@click.option("--ema", is_flag=True, help="With --stage-c-weights on a training checkpoint: use its EMA weights.")
@click.option("--stage-c", "stage_c", default="lite", show_default=True, type=click.Choice(["lite", "big"]))
@click.option("--stage-b", "stage_b", default="lite", show_default=True, type=click.Choice(["lite", "big"]))
@click.option("--dtype", default=None, type=click.Choice(["fp32", "bf16", "fp16"]), help="Precision (default: bf16 on CUDA, fp32 on CPU; Stage C never runs in fp16).")
@click.option("--device", default=None, type=DEVICE, help="cpu, cuda ... (default: cuda if available).")
@offload_option
@click.pass_context
@reports_user_errors
def sample(ctx, prompts, weights, out, overwrite, negative, steps, guidance, shift, decoder_steps, decoder_guidance,
           seed, n, height, width, image, init_image, strength, lora, stage_c_weights, ema, stage_c, stage_b, dtype,
           device):
    """Generate images for PROMPT... and write them as PNGs to --out."""
    if init_image is None and ctx.get_parameter_source("strength") is not ParameterSource.DEFAULT:
        raise click.UsageError("--strength only applies to image-to-image: give --init-image too")
    check_pixel_budget(height, width)
    _run(prompts, weights, out, overwrite, negative, steps, guidance, shift, decoder_steps, decoder_guidance, seed,
         n, height, width, image, init_image, strength, lora, stage_c_weights, ema, stage_c, stage_b, dtype, device)


def _run(prompts, weights, out, overwrite, negative, steps, guidance, shift, decoder_steps, decoder_guidance, seed,
         n, height, width, image, init_image, strength, lora, stage_c_weights, ema, stage_c, stage_b, dtype, device):
    import warnings

    from cascadekit.codec.errors import InputError
    from cascadekit.generator.pipeline import TextToImagePipeline

    if ema and stage_c_weights is None:
        raise InputError("--ema needs --stage-c-weights pointing at a training run or checkpoint")
    if not prompts and image is None:
        raise InputError("give at least one PROMPT (or --image for an image variation)")
    claim_out_folder(out, SAMPLE, overwrite)
    dev = pick_device(device)
    dtype = default_dtype(dtype, dev)
    weights, _, tiny = pick_weights(weights, stage_b=stage_b)
    with warnings.catch_warnings():
        if tiny:
            warnings.simplefilter("ignore")  # the banner above says it once
        pipe = TextToImagePipeline.from_pretrained(weights, device=dev, dtype=dtype, stage_c=stage_c,
                                                   stage_b=stage_b, lora=lora, stage_c_weights=stage_c_weights,
                                                   ema=ema, offload=picked_offload())
    from cascadekit.codec.images import load_image

    warn_truncated(pipe.text_encoder, {"PROMPT": list(prompts), "--negative": [negative] if negative else []})
    reset_peak(dev)
    res = pipe(list(prompts) or [""], negative_prompt=negative, height=height, width=width, num_images_per_prompt=n,
               seed=seed, prior_steps=steps, prior_guidance=guidance, prior_shift=shift, decoder_steps=decoder_steps,
               decoder_guidance=decoder_guidance, image=load_image(image) if image else None,
               init_image=load_image(init_image) if init_image else None, strength=strength)
    report_peak(dev)
    files = res.write(out)
    for p in files.images:
        click.echo(str(p))
    click.echo(f"grid: {files.grid}")
    click.echo(f"record: {files.manifest}")
    if pipe.tiny:
        click.echo("note: generated with TINY RANDOM WEIGHTS: the images are meaningless", err=True)


def warn_truncated(text_encoder, texts: dict[str, list[str]]) -> None:
    """Warn on stderr for every text longer than the text encoder's context (77 CLIP tokens): it is cut there,
    and the warning says how many tokens were dropped. texts: flag name -> the texts given with it."""
    limit = text_encoder.max_length
    for flag, items in texts.items():
        for text in items:
            n = len(text_encoder.tokenizer(text, truncation=False, verbose=False)["input_ids"])
            if n > limit:
                shown = text if len(text) <= 40 else text[:37] + "..."
                click.echo(f"warning: {flag} {shown!r} has {n} tokens; the text encoder reads {limit}, so the "
                           f"last {n - limit} tokens are dropped", err=True)
