"""`cascadekit add-controls STORE --controls canny,sr,inpaint [--effnet-scales 0.5,0.75,1.0]`: ControlNet controls
(and Stage B's stored EfficientNet scales) for a finished store."""
from __future__ import annotations

import click

from cascadekit.cli.common import default_dtype, pick_device, pick_weights, reports_user_errors
from cascadekit.cli.effnet_scales_option import effnet_scales_option
from cascadekit.cli.params import DEVICE, STORE_IN


def _controls(ctx, param, value):
    """--controls checked when parsed (before any weights load)."""
    from cascadekit.codec.errors import InputError
    from cascadekit.datasets.controls import parse_controls

    try:
        return parse_controls(value)
    except InputError as e:
        raise click.BadParameter(str(e), param_hint="--controls") from None


@click.command("add-controls")
@click.argument("store", type=STORE_IN)
@click.option("--controls", "controls", default=None, callback=_controls, metavar="LIST",
              help="Comma-separated: canny (224² uint8 edge map), sr (effnet latents of the x0.5 crop), inpaint "
                   "(the crop's pixels, lossless).")
@effnet_scales_option
@click.option("--weights", default=None, help="Weights with the EfficientNet encoder (sr / scales; default: as for encode).")
@click.option("--device", default=None, type=DEVICE, help="cpu, cuda ... (sr / scales; default: cuda if available).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@reports_user_errors
def add_controls(store, controls, effnet_scales, weights, device, quiet):
    """Add ControlNet controls to STORE without re-encoding its latents (its source files are read again and
    prepared as encode prepared them). Resumable: a rerun finishes the chunks still pending or damaged."""
    from cascadekit.datasets.add_controls import add_controls as run

    if not controls and not effnet_scales:
        raise click.UsageError("give --controls (canny, sr, inpaint) and/or --effnet-scales (e.g. 0.5,0.75,1.0)")
    encoder = None
    if "sr" in controls or effnet_scales:
        from cascadekit.codec.codec import Codec
        from cascadekit.datasets.access import LatentStore

        attrs = LatentStore(store).attrs  # the encoder resolution the store was made with
        res = (attrs.get("encoder") or {}).get("encoder_resolution") or attrs["preprocess"]["resolution"]
        weights, _, _ = pick_weights(weights, announce=True)
        dev = pick_device(device)
        encoder = Codec.from_pretrained(weights, device=dev, dtype=default_dtype(None, dev), encoder_resolution=res,
                                        components=("effnet",))
    out = run(store, controls, encoder, effnet_scales=effnet_scales, progress=not quiet)
    skipped = ", ".join(f"{r} {n}" for r, n in out["skipped"].items()) or "none"
    click.echo(f"added {', '.join(out['controls'])} to {out['rows_done']} rows ({out['chunks']} chunks) of {store}; "
               f"rows whose source could not be read again: {skipped}")
