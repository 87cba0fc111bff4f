"""`cascadekit encode`: an image corpus -> a Zarr latent dataset (resumable, torchrun-aware)."""
from __future__ import annotations

import click

from cascadekit.cli.common import default_dtype, open_previewer, pick_device, pick_weights, reports_user_errors
from cascadekit.cli.embed_text import captions_phrase
from cascadekit.cli.effnet_scales_option import effnet_scales_option
from cascadekit.cli.params import BATCH, COUNT, DEVICE, STORE_OUT, WORKERS, PixelSide


@click.command("encode")
@click.argument("inputs", nargs=-1)
@click.option("--out", "out", required=True, type=STORE_OUT, help="Store folder to create or resume (STORE.zarr), or an fsspec URL (s3://bucket/corpus.zarr; credentials from the environment).")
@click.option("--weights", default=None, help="Weights folder / diffusers snapshot / hub id (default: $CASCADEKIT_WEIGHTS or ~/.cache/cascadekit/weights, else the tiny RANDOM test weights).")
@click.option("--resolution", default=768, show_default=True, type=PixelSide(multiple=32), help="Crop side in pixels (multiple of 32); 768 -> 24x24 latents.")
@click.option("--encoder-resolution", default=None, type=PixelSide(minimum=32), help="Short side the EfficientNet sees (default: --resolution). E.g. --resolution 1024 --encoder-resolution 768 --stage-a: 24x24 latents + 4x256x256 Stage A latents, the Stage B training layout.")
@click.option("--dtype", "dtype", default="float16", show_default=True, type=click.Choice(["float16", "float32"]), help="Storage dtype of the latents.")
@click.option("--compute-dtype", default=None, type=click.Choice(["fp32", "bf16", "fp16"]), help="Encoder precision (default: bf16 on CUDA, fp32 on CPU).")
@click.option("--stage-a", is_flag=True, help="Also store Stage A latents (4, H/4, W/4), for training Stage B.")
@click.option("--controls", "controls", default=None, callback=lambda c, p, v: _controls(v), metavar="LIST",
              help="ControlNet controls stored with the latents, comma-separated: canny (224² uint8 edge map), sr "
                   "(effnet latents of the x0.5 crop), inpaint (the crop's pixels, lossless). See docs/controlnet.md.")
@effnet_scales_option
@click.option("--buckets", is_flag=True, help="Aspect-ratio buckets (official multi-aspect list), one group per bucket.")
@click.option("--min-size", default=None, type=COUNT, help="Skip images whose shorter side is below this (reason too_small).")
@click.option("--max-input-bytes", default=256 * 1024 * 1024, show_default=True, type=click.IntRange(min=1),
              help="Most bytes read from one input file or tar member (default 256 MiB); larger ones are skipped "
                   "(reason too_large). FIFOs, devices and sockets are never read (reason not_a_file).")
@click.option("--batch-size", default=32, show_default=True, type=BATCH, help="Encoder batch (at most --chunk-rows). Recorded in the store: resume with the same value.")
@click.option("--num-workers", default=2, show_default=True, type=WORKERS, help="DataLoader processes decoding images ahead (0: in the main process). A CPU encoder whose threads "
                   "use every core decodes on threads between its batches instead (no processes).")
@click.option("--chunk-rows", default=256, show_default=True, type=COUNT, help="Samples per chunk (unit of resume and of each writer).")
@click.option("--device", default=None, type=DEVICE, help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available).")
@click.option("--decode-on", "decode_on", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where images are decoded: cpu (the --num-workers processes) or cuda (baseline JPEGs in batches "
                   "through nvJPEG on the encoder's GPU, resized there; every other file, or one the GPU refuses, "
                   "on the CPU). Recorded in the store: resume with the same value.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the EfficientNet encoder (and Stage A with --stage-a), checked against eager on "
                   "the first batch; pays off on a GPU.")
@click.option("--overwrite", is_flag=True, help="Rebuild an existing store made with different settings.")
@click.option("--text-embeddings", is_flag=True, help="Afterwards, add CLIP text embeddings of the captions.")
@click.option("--no-preview", is_flag=True, help="Skip the inspect preview at the end.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--tmp-dir", default=None, type=click.Path(file_okay=False, exists=True), help="Folder for the corpus plan's anonymous temporary files (default: $TMPDIR). Nothing is left there afterwards.")
@reports_user_errors
def encode(inputs, out, weights, resolution, encoder_resolution, dtype, compute_dtype, stage_a, buckets, min_size, batch_size,
           num_workers, chunk_rows, device, overwrite, text_embeddings, no_preview, quiet, tmp_dir, max_input_bytes,
           controls, effnet_scales, decode_on="cpu", compile_=False):
    """Encode INPUT... (folders, tar shards incl. {000..099} patterns and pipe: URLs, .jsonl/.csv
    manifests) into the latent store --out. Safe to kill and rerun: it resumes. With no INPUT and no
    --weights it encodes the built-in sample photographs with the tiny default weights.

    Multi-GPU / multi-node: torchrun --nproc-per-node N -m cascadekit.cli encode ...
    """
    if batch_size > chunk_rows:
        raise click.UsageError(f"--batch-size {batch_size} is above --chunk-rows {chunk_rows}: a batch must fit in "
                               "one chunk; lower --batch-size or raise --chunk-rows")
    from cascadekit.codec import distributed as D

    info = D.from_env()
    summary, weights = _run(inputs, out, weights, resolution, encoder_resolution, dtype, compute_dtype, stage_a, buckets, min_size,
                          batch_size, num_workers, chunk_rows, device, overwrite, text_embeddings, quiet, info,
                          tmp_dir=tmp_dir, max_input_bytes=max_input_bytes, controls=controls,
                          effnet_scales=effnet_scales, decode_on=decode_on, compile_=compile_)
    if info.is_main:
        click.echo(str(summary))
        if not no_preview:
            from cascadekit.datasets.inspect import format_report, inspect_store

            codec, why = open_previewer(weights)
            rep = inspect_store(out, codec, write=True, preview_error=why)
            click.echo(format_report(rep))


def _controls(value):
    """--controls checked when parsed (before any weights load)."""
    if value is None:  # the default: nothing to check, no heavy import at parse time
        return ()
    from cascadekit.codec.errors import InputError
    from cascadekit.datasets.controls import parse_controls

    try:
        return parse_controls(value)
    except InputError as e:
        raise click.BadParameter(str(e), param_hint="--controls") from None


def _check_decode_on(decode_on: str, dev) -> None:
    """--decode-on cuda needs the encoder on a CUDA device (checked before weights load)."""
    if decode_on == "cuda" and dev.type != "cuda":
        from cascadekit.codec.errors import InputError

        raise InputError(f"--decode-on cuda decodes JPEGs on the encoder's GPU, but this run encodes on {dev}; "
                         "use --device cuda on a machine with CUDA, or --decode-on cpu")


def _run(inputs, out, weights, resolution, encoder_resolution, dtype, compute_dtype, stage_a, buckets, min_size, batch_size,
         num_workers, chunk_rows, device, overwrite, text_embeddings, quiet, info, tmp_dir=None,
         max_input_bytes=256 * 1024 * 1024, controls=(), effnet_scales=(), decode_on="cpu", compile_=False):
    import warnings

    from cascadekit.codec.codec import Codec
    from cascadekit.datasets.builder import build_latent_dataset

    dev = pick_device(device)
    _check_decode_on(decode_on, dev)
    compute_dtype = default_dtype(compute_dtype, dev)
    if not inputs:
        if weights is not None:
            raise click.UsageError("give INPUT... to encode (the built-in sample corpus goes with the default weights)")
        from cascadekit.codec.defaults import sample_manifest

        inputs = [str(sample_manifest())]  # the sample photographs with their captions
    weights, _, announced = pick_weights(weights, announce=info.is_main)
    with warnings.catch_warnings():
        if announced or not info.is_main:  # the banner said it already / one rank reports
            warnings.simplefilter("ignore")
        # only what encoding needs: the effnet (+ Stage A for --stage-a); Stage B never runs here
        codec = Codec.from_pretrained(weights, device=dev, dtype=compute_dtype,
                                      encoder_resolution=encoder_resolution or resolution,
                                      components=("effnet", "stage_a") if stage_a else ("effnet",))
    if compile_:
        from cascadekit.codec.compile import compile_codec

        compile_codec(codec, ("effnet", "stage_a") if stage_a else ("effnet",))
    spaces = ("semantic", "stage_a") if stage_a else ("semantic",)
    summary = build_latent_dataset(list(inputs), out, codec,
                                   resolution=resolution, dtype=dtype, spaces=spaces, buckets=buckets,
                                   min_size=min_size, batch_size=batch_size, num_workers=num_workers,
                                   chunk_rows=chunk_rows, overwrite=overwrite, progress=not quiet, dist_info=info,
                                   tmp_dir=tmp_dir, max_input_bytes=max_input_bytes, controls=controls,
                                   effnet_scales=effnet_scales, device_decode=decode_on == "cuda")
    if text_embeddings and info.is_main:
        from cascadekit.codec.text import TextEncoder
        from cascadekit.datasets.text_embeddings import add_text_embeddings

        te = TextEncoder.from_pretrained(weights, device=dev)
        res = add_text_embeddings(out, te, overwrite=overwrite, progress=not quiet)
        click.echo(f"text embeddings: {captions_phrase(res, ' embedded')}")  # '4 empty captions' when none had text
    return summary, weights
