"""`cascadekit fid A B`: FID between two image folders (either may be saved `.npz` statistics)."""
from __future__ import annotations

import json

import click


@click.command("fid")
@click.argument("a", type=click.Path(exists=True))
@click.argument("b", type=click.Path(exists=True), required=False)
@click.option("--save-stats", "save_to", type=click.Path(dir_okay=False), default=None,
              help="With only A: featurise folder A once and save its Inception statistics (.npz) here.")
@click.option("--weights-dir", type=click.Path(file_okay=False), default=None,
              help="Folder holding weights-inception-2015-12-05-6726825d.pth (default: the torch hub cache).")
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True)
def fid(a, b, save_to, weights_dir, batch_size, device):
    """FID between image folders A and B, or save A's statistics with --save-stats."""
    from cascadekit.metrics.fid import InceptionFeatures, fid_folders, folder_stats, save_stats

    skipped: list[tuple[str, str]] = []
    if b is None:
        if save_to is None:
            raise click.UsageError("give a second folder B, or --save-stats FILE.npz to save A's statistics")
        stats = folder_stats(a, InceptionFeatures(weights_dir=weights_dir, device=device), batch_size=batch_size,
                             skipped=skipped, progress=True)
        click.echo(f"saved statistics of {a} to {save_stats(stats, save_to)}")
    else:
        value = fid_folders(a, b, weights_dir=weights_dir, device=device, batch_size=batch_size, skipped=skipped,
                            progress=True)
        click.echo(json.dumps({"fid": value, "a": str(a), "b": str(b), "skipped": len(skipped)}))
    for path, reason in skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
