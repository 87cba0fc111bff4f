"""`cascadekit inspect STORE`: counts, shapes, stats, error summary and a preview grid of a latent store."""
from __future__ import annotations

import json

import click

from cascadekit.cli.common import open_previewer, pick_weights, reports_user_errors
from cascadekit.cli.params import STORE_IN
from cascadekit.codec.errors import InputError


@click.command("inspect")
@click.argument("store", type=STORE_IN)
@click.option("--weights", default=None, help="Weights with a previewer for the preview grid (default: as for encode: $CASCADEKIT_WEIGHTS, the cache, else the tiny random weights).")
@click.option("--n-preview", default=16, show_default=True, type=click.IntRange(min=0))
@click.option("--no-preview", is_flag=True, help="Only the report, no previewer decodes.")
@click.option("--verify", is_flag=True,
              help="Read every chunk behind the rows marked done and check it (present, crc32c checksum); list the "
                   "missing or damaged ones per array with their rows; if there are any, end with one `error:` line "
                   "(how many, the remedy: rerun encode / embed-text) and exit status 2.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@reports_user_errors
def inspect_store(store, weights, n_preview, no_preview, verify, as_json):
    """Report on STORE and write STORE/inspect/preview.png (previewer decodes of a few latents)."""
    from cascadekit.datasets.inspect import format_report
    from cascadekit.datasets.inspect import inspect_store as run
    from cascadekit.datasets.verify import format_verify, verify_error, verify_store

    if verify:
        ver = verify_store(store)
        if not ver["ok"]:  # the full report would read the damaged chunks: the verification is the answer
            click.echo(json.dumps({"verify": ver}, indent=2) if as_json else format_verify(ver))
            raise InputError(verify_error(ver))  # the last line: `error: ...`, exit 2
    codec, why = None, None
    if not no_preview:
        weights, _, _ = pick_weights(weights, announce=False)
        codec, why = open_previewer(weights)
    rep = run(store, codec, n_preview=n_preview, write=True, preview_error=why)
    if verify:
        rep["verify"] = ver
    click.echo(json.dumps(rep, indent=2) if as_json else format_report(rep) + ("\n" + format_verify(ver) if verify else ""))
