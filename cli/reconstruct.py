"""`cascadekit reconstruct`: images -> semantic latents -> images, written side by side."""
from __future__ import annotations

import click

from cascadekit.cli.common import default_dtype, pick_device, pick_weights, reports_user_errors
from cascadekit.cli.out_folder import RECONSTRUCT, claim_out_folder
from cascadekit.cli.params import DEVICE, FINITE, MAX_PIXELS, OUT_FOLDER, SEED, STEPS, PixelSide
from cascadekit.cli.stage_b_options import apply_stage_b_weights, check_stage_b_flags, ema_option, stage_b_weight_options


@click.command("reconstruct")
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", required=True, type=OUT_FOLDER,
              help="Output folder (created). A folder with an earlier run's outputs needs --overwrite.")
@click.option("--overwrite", is_flag=True, help="Remove the outputs of an earlier `reconstruct` run in --out first.")
@click.option("--weights", default=None,
              help="Weights folder / diffusers snapshot / hub id. Default: $CASCADEKIT_WEIGHTS or "
                   "~/.cache/cascadekit/weights, else the built-in TINY RANDOM weights (clearly labelled).")
@click.option("--stage-b", "stage_b", default="lite", show_default=True, type=click.Choice(["lite", "big"]))
@click.option("--steps", default=10, show_default=True, type=STEPS, help="Stage B sampling steps.")
@click.option("--guidance", default=1.1, show_default=True, type=FINITE, help="Stage B classifier-free guidance.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="0 <= seed < 2**63.")
@click.option("--size", default=1024, show_default=True, type=PixelSide(multiple=64),
              help="A multiple of 64: resize each image's short side to this, then centre-crop to multiples of 64.")
@click.option("--encoder-resolution", default=768, show_default=True, type=PixelSide(minimum=32),
              help="Short side the effnet sees (official 768: 1024² -> 24×24 latents).")
@click.option("--device", default=None, type=DEVICE, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
@click.option("--dtype", default=None, type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Compute precision (default: bf16 on CUDA, fp32 on CPU). fp16 runs Stage B in bf16.")
@click.option("--allow-zero-text", is_flag=True,
              help="Decode with a zero text embedding when no empty-caption CLIP embedding (or text encoder) exists.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the EfficientNet encoder, Stage B and Stage A, each checked against eager on its "
                   "first call; pays off on a GPU.")
@stage_b_weight_options
@ema_option
@reports_user_errors
def reconstruct(images, out, overwrite, weights, stage_b, steps, guidance, seed, size, encoder_resolution, device,
                dtype, allow_zero_text, compile_=False, stage_b_weights=None, ema=False):
    """Reconstruct IMAGES... (encode + decode) into --out: one PNG each, grid.png (original |
    reconstruction) and reconstruct.json. With no IMAGES, scikit-image's sample photographs are used."""
    check_stage_b_flags(stage_b_weights, ema)
    claim_out_folder(out, RECONSTRUCT, overwrite)
    _run(images, out, weights, stage_b, steps, guidance, seed, size, encoder_resolution, device, dtype,
         allow_zero_text, stage_b_choice=(stage_b_weights, ema), compile_=compile_)


def _run(images, out, weights, stage_b, steps, guidance, seed, size, encoder_resolution, device, dtype,
         allow_zero_text=False, stage_b_choice=(None, False), compile_=False):
    import warnings

    from cascadekit.codec.codec import Codec
    from cascadekit.codec.defaults import sample_image_paths
    from cascadekit.codec.reconstruct_files import reconstruct_files

    dev = pick_device(device)
    dtype = default_dtype(dtype, dev)
    paths = list(images) or [str(p) for p in sample_image_paths()]
    source, info, _ = pick_weights(weights, stage_b=stage_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny-weights warning is replaced by the banner / line below
        codec = Codec.from_pretrained(source, stage_b=stage_b, device=dev, dtype=dtype,
                                      encoder_resolution=encoder_resolution, allow_zero_text=allow_zero_text)
    apply_stage_b_weights(codec, *stage_b_choice)
    if compile_:  # after --stage-b-weights: the compiled Stage B is the one that decodes
        from cascadekit.codec.compile import compile_codec

        compile_codec(codec, ("effnet", "stage_b", "stage_a"))
    if codec.tiny:
        click.echo(f"weights: {info['source']} (TINY RANDOM)", err=True)
    else:
        click.echo(f"weights: {info['source']}", err=True)
    summary = reconstruct_files(codec, paths, out, size=size, steps=steps, guidance=guidance, seed=seed,
                                weights_info=info, max_pixels=MAX_PIXELS)
    for rec in summary["images"]:
        click.echo(f"{rec['input']} -> {out}/{rec['reconstruction']}  PSNR {rec['psnr_db']:.2f} dB")
    click.echo(f"grid: {out}/grid.png  parameters: {out}/reconstruct.json")
    if codec.tiny:
        click.echo("NOTE: these reconstructions come from TINY RANDOM weights and are meaningless.", err=True)
