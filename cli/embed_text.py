"""`cascadekit embed-text STORE`: add CLIP text embeddings of every caption to a latent store."""
from __future__ import annotations

import click

from cascadekit.cli.common import pick_device, pick_weights, reports_user_errors


@click.command("embed-text")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--weights", default=None, help="Folder / snapshot with text_encoder/ and tokenizer/ (default: as for encode: $CASCADEKIT_WEIGHTS, the cache, else the tiny random weights).")
@click.option("--device", default=None, help="cpu, cuda ... (default: cuda if available).")
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace embeddings made by another text encoder.")
@click.option("--quiet", is_flag=True)
@reports_user_errors
def embed_text(store, weights, device, batch_size, overwrite, quiet):
    """Add clip_text (N,77,C) and clip_text_pooled (N,1,C) float16 arrays to STORE (resumable)."""
    from cascadekit.codec.text import TextEncoder
    from cascadekit.datasets.text_embeddings import add_text_embeddings

    weights, _, _ = pick_weights(weights, announce=False)
    te = TextEncoder.from_pretrained(weights, device=pick_device(device))
    res = add_text_embeddings(store, te, batch_size=batch_size, overwrite=overwrite, progress=not quiet)
    click.echo(f"embedded {res['embedded']} captions of {res['rows']} rows into {store}")
