"""`cascadekit inspect STORE`: counts, shapes, stats, error summary and a preview grid of a latent store."""
from __future__ import annotations

import json

import click

from cascadekit.cli.common import pick_weights, reports_user_errors


@click.command("inspect")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--weights", default=None, help="Weights with a previewer for the preview grid (default: as for encode: $CASCADEKIT_WEIGHTS, the cache, else the tiny random weights).")
@click.option("--n-preview", default=16, show_default=True, type=int)
@click.option("--no-preview", is_flag=True, help="Only the report, no previewer decodes.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@reports_user_errors
def inspect_store(store, weights, n_preview, no_preview, as_json):
    """Report on STORE and write STORE/inspect/preview.png (previewer decodes of a few latents)."""
    from cascadekit.datasets.inspect import format_report
    from cascadekit.datasets.inspect import inspect_store as run

    codec, why = None, None
    if not no_preview:
        import warnings

        from cascadekit.codec.codec import Codec
        from cascadekit.codec.errors import WeightsError

        weights, _, _ = pick_weights(weights, announce=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report itself says which encoder made the store
            try:  # only the previewer: Stage B, Stage A and the effnet are not needed for previews
                codec = Codec.from_pretrained(weights, device="cpu", components=("previewer",))
            except WeightsError as e:  # e.g. diffusers weights have no previewer: the report still counts
                why = f"{e}\n(pass --weights with a previewer.safetensors, or --no-preview)"
    rep = run(store, codec, n_preview=n_preview, write=True, preview_error=why)
    click.echo(json.dumps(rep, indent=2) if as_json else format_report(rep))
