"""`cascadekit embed-text STORE`: add CLIP text embeddings of every caption to a latent store."""
from __future__ import annotations

import click

from cascadekit.cli.common import pick_device, pick_weights, reports_user_errors
from cascadekit.cli.params import DEVICE, STORE_IN


@click.command("embed-text")
@click.argument("store", type=STORE_IN)
@click.option("--weights", default=None, help="Folder / snapshot with text_encoder/ and tokenizer/ (default: as for encode: $CASCADEKIT_WEIGHTS, the cache, else the tiny random weights).")
@click.option("--device", default=None, type=DEVICE, help="cpu, cuda ... (default: cuda if available).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Captions per text-encoder call (a batch never crosses a text chunk: more than its rows acts as that many).")
@click.option("--overwrite", is_flag=True, help="Replace embeddings made by another text encoder.")
@click.option("--quiet", is_flag=True)
@reports_user_errors
def embed_text(store, weights, device, batch_size, overwrite, quiet):
    """Add clip_text (N,77,C) and clip_text_pooled (N,1,C) float16 arrays to STORE (resumable; a rerun also
    re-creates deleted or damaged embedding chunks)."""
    from cascadekit.codec.text import TextEncoder
    from cascadekit.datasets.text_embeddings import add_text_embeddings, check_embeddable

    check_embeddable(store)  # complete and not in use: before any weights are loaded
    weights, _, _ = pick_weights(weights, announce=False)
    te = TextEncoder.from_pretrained(weights, device=pick_device(device))
    res = add_text_embeddings(store, te, batch_size=batch_size, overwrite=overwrite, progress=not quiet)
    click.echo(describe_result(res, store))
    if batch_size > res["batch_size_used"] and res["embedded"]:
        click.echo(f"note: --batch-size {batch_size} is more than the {res['batch_size_used']} rows of a text chunk; "
                   f"batches had at most {res['batch_size_used']} captions")


def captions_phrase(res: dict, verb: str = "") -> str:
    """'4 captions<verb>' / '4 captions<verb> (1 empty)' / '4 empty captions<verb>' of an ``add_text_embeddings``
    result."""
    n, empty = res["embedded"], res.get("empty", 0)
    if n and empty == n:
        return f"{n} empty captions{verb}"
    return f"{n} captions{verb}" + (f" ({empty} empty)" if empty else "")


def describe_result(res: dict, store) -> str:
    """'embedded 4 captions (1 empty) of 4 rows into STORE' / 'embedded 4 empty captions ...'."""
    return f"embedded {captions_phrase(res)} of {res['rows']} rows into {store}"
