"""`cascadekit sample`: text-to-image (Stage C -> Stage B -> Stage A) with the official notebook defaults."""
from __future__ import annotations

import click
from click.core import ParameterSource

from cascadekit.cli.common import default_dtype, pick_device, pick_weights, reports_user_errors
from cascadekit.cli.control_options import control_options, control_settings, controlnet_source, precheck_controlnet
from cascadekit.cli.lora_options import lora_kwargs, lora_options
from cascadekit.cli.offload_options import offload_option, picked_offload, report_peak, reset_peak
from cascadekit.cli.out_folder import SAMPLE, claim_out_folder
from cascadekit.cli.params import (COUNT, DEVICE, FINITE, MAX_SIDE, OUT_FOLDER, SEED, STEPS, FiniteFloat, PixelSide,
                                   check_batch_pixels, check_pixel_budget)
from cascadekit.cli.stage_b_options import apply_stage_b_weights, stage_b_weight_options

SIDE = PixelSide(multiple=1, minimum=32, max_side=MAX_SIDE)


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
@click.option("--n", "n", default=1, show_default=True, type=COUNT, help="Images per prompt; all prompts x --n images are one batch, at most 64 images of 1024² "
                   "(67 MP) in all.")
@click.option("--height", default=1024, show_default=True, type=SIDE, help="Image height in pixels (>= 32).")
@click.option("--width", default=1024, show_default=True, type=SIDE, help="Image width in pixels (>= 32).")
@click.option("--image", "image", default=None, type=click.Path(exists=True, dir_okay=False), help="Image variation: condition on this image's CLIP embedding.")
@click.option("--init-image", default=None, type=click.Path(exists=True, dir_okay=False), help="Image-to-image: start from this image.")
@click.option("--strength", default=0.8, show_default=True, type=FiniteFloat(min=0, max=1, min_open=True), help="With --init-image: image-to-image noise level (0, 1]: 1 ignores the image.")
@lora_options
@control_options
@click.option("--stage-c-weights", "stage_c_weights", default=None, type=click.Path(exists=True),
              help="Stage C weights to use instead of those in --weights: a `cascadekit train` run folder or "
                   "checkpoint (RUN/checkpoints/step_N), or a Stage C file / prior folder.")
@click.option("--ema", is_flag=True, help="With --stage-c-weights / --stage-b-weights on a training checkpoint: use "
                                          "its EMA weights.")
@stage_b_weight_options
@click.option("--stage-c", "stage_c", default="lite", show_default=True, type=click.Choice(["lite", "big"]))
@click.option("--stage-b", "stage_b", default="lite", show_default=True, type=click.Choice(["lite", "big"]))
@click.option("--dtype", default=None, type=click.Choice(["fp32", "bf16", "fp16"]), help="Precision (default: bf16 on CUDA, fp32 on CPU; Stage C never runs in fp16).")
@click.option("--device", default=None, type=DEVICE, help="cpu, cuda ... (default: cuda if available).")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile Stage C (checked against eager on its first call; pays off on a GPU).")
@offload_option
@click.pass_context
@reports_user_errors
def sample(ctx, prompts, weights, out, overwrite, negative, steps, guidance, shift, decoder_steps, decoder_guidance,
           seed, n, height, width, image, init_image, strength, lora, stage_c_weights, ema, stage_c, stage_b, dtype,
           device, lora_scale=1.0, lora_token=(), control=None, control_image=None, mask=None, outpaint=False,
           paste_back=False, control_strength=1.0, controlnet=None, stage_b_weights=None, compile_=False):
    """Generate images for PROMPT... and write them as PNGs to --out."""
    lora = lora_kwargs(lora, lora_scale, lora_token)  # from_pretrained keywords
    ctl = control_settings(control, control_image, mask, outpaint, paste_back, control_strength)
    inpainting = ctl is not None and ctl.control == "inpainting"
    if init_image is None and not inpainting and ctx.get_parameter_source("strength") is not ParameterSource.DEFAULT:
        raise click.UsageError("--strength only applies to image-to-image: give --init-image (or --control inpainting)")
    if inpainting and ctx.get_parameter_source("strength") is ParameterSource.DEFAULT:
        strength = 1.0  # the official inpainting notebook's noise_level
    check_pixel_budget(height, width)
    check_batch_pixels(n, max(1, len(prompts)), height, width)
    if ema and stage_c_weights is None and stage_b_weights is None:
        raise click.UsageError("--ema needs --stage-c-weights or --stage-b-weights pointing at a training run or checkpoint")
    if not prompts and image is None:
        raise click.UsageError("give at least one PROMPT (or --image for an image variation)")
    claim_out_folder(out, SAMPLE, overwrite)  # every check above passed; before the heavy imports of _run
    _run(prompts, weights, out, overwrite, negative, steps, guidance, shift, decoder_steps, decoder_guidance, seed,
         n, height, width, image, init_image, strength, lora, stage_c_weights, ema, stage_c, stage_b, dtype, device,
         control=(ctl, controlnet), stage_b_weights=stage_b_weights)


def _run(prompts, weights, out, overwrite, negative, steps, guidance, shift, decoder_steps, decoder_guidance, seed,
         n, height, width, image, init_image, strength, lora, stage_c_weights, ema, stage_c, stage_b, dtype, device,
         control=(None, None), stage_b_weights=None):
    import warnings

    from cascadekit.generator.pipeline import TextToImagePipeline

    dev = pick_device(device)
    dtype = default_dtype(dtype, dev)
    weights, _, tiny = pick_weights(weights, stage_b=stage_b)
    if control[0] is not None:  # a ControlNet for another Stage C fails here, from the headers alone
        precheck_controlnet(controlnet_source(control[1], weights), control[0].control, weights, stage_c)
    with warnings.catch_warnings():
        if tiny:
            warnings.simplefilter("ignore")  # the banner above says it once
        pipe = TextToImagePipeline.from_pretrained(weights, device=dev, dtype=dtype, stage_c=stage_c,
                                                   stage_b=stage_b, **lora, stage_c_weights=stage_c_weights,
                                                   ema=ema, offload=picked_offload())
        apply_stage_b_weights(pipe.codec, stage_b_weights, ema)
        if control[0] is not None:
            pipe.load_controlnet(controlnet_source(control[1], weights), control[0].control)
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.params.get("compile_"):
        pipe.enable_compile()
    from cascadekit.codec.images import load_image

    warn_truncated(pipe.text_encoder, {"PROMPT": list(prompts), "--negative": [negative] if negative else []})
    reset_peak(dev)
    res = pipe(list(prompts) or [""], negative_prompt=negative, height=height, width=width, num_images_per_prompt=n,
               seed=seed, prior_steps=steps, prior_guidance=guidance, prior_shift=shift, decoder_steps=decoder_steps,
               decoder_guidance=decoder_guidance, image=load_image(image) if image else None,
               init_image=load_image(init_image) if init_image else None, strength=strength,
               control=control[0])
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
