"""`cascadekit fid A B`: FID between two image folders (either may be saved `.npz` statistics)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cascadekit.cli.common import reports_user_errors
from cascadekit.cli.out_folder import claim_out_file
from cascadekit.cli.params import BATCH, DEVICE


@click.command("fid")
@click.argument("a", type=click.Path(exists=True))
@click.argument("b", type=click.Path(exists=True), required=False)
@click.option("--save-stats", "save_to", type=click.Path(dir_okay=False), default=None,
              help="Save the Inception statistics (.npz) of folder A here (with or without B), so A is featurised "
                   "once. An existing file needs --overwrite.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --save-stats file.")
@click.option("--weights-dir", type=click.Path(file_okay=False), default=None,
              help="Folder holding weights-inception-2015-12-05-6726825d.pth (default: the torch hub cache).")
@click.option("--batch-size", default=16, show_default=True, type=BATCH)
@click.option("--device", default="cpu", show_default=True, type=DEVICE)
@click.option("--offline", is_flag=True,
              help="Never download a missing Inception file (also CASCADEKIT_OFFLINE=1 / HF_HUB_OFFLINE=1).")
@reports_user_errors
def fid(a, b, save_to, overwrite, weights_dir, batch_size, device, offline):
    """FID between A and B (each an image folder or an .npz of saved statistics), and/or save folder A's
    statistics with --save-stats. Unreadable images are skipped and listed."""
    from cascadekit.cli.common import pick_device

    if b is None and save_to is None:
        raise click.UsageError("give a second folder B, or --save-stats FILE.npz to save A's statistics")
    if save_to is not None:
        if not Path(a).is_dir():
            raise click.UsageError(f"--save-stats saves the statistics of an image folder, and A ({a}) is a file")
        claim_out_file(save_to, overwrite, "--save-stats")
    from cascadekit.metrics.fid import (InceptionFeatures, check_stats_source, checked_folder_stats, frechet_distance,
                                        stats_of)

    for flag, source in (("A", a), ("B", b)):
        if source is not None:
            check_stats_source(source, flag)
    dev = pick_device(device)
    needs_features = any(s is not None and Path(s).is_dir() for s in (a, b))
    if needs_features:  # downloaded (verified) into torch's hub cache when missing, unless offline
        from cascadekit.metrics.download import DownloadSettings
        from cascadekit.metrics.weights import INCEPTION, find_weights

        find_weights(INCEPTION, weights_dir, DownloadSettings.from_env(offline=offline))
    extractor = InceptionFeatures(weights_dir=weights_dir, device=dev) if needs_features else None
    skipped: list[tuple[str, str]] = []
    if save_to is not None:
        stats = checked_folder_stats(a, extractor, batch_size=batch_size, skipped=skipped, progress=True)
        mu_a, sigma_a = stats.mu, stats.sigma
        click.echo(f"saved statistics of {a} ({stats.n} images) to {_save(stats, save_to)}", err=b is not None)
    else:
        mu_a, sigma_a = stats_of(a, extractor, batch_size=batch_size, skipped=skipped, progress=True)
    if b is not None:
        mu_b, sigma_b = stats_of(b, extractor, batch_size=batch_size, skipped=skipped, progress=True)
        value = frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
        click.echo(json.dumps({"fid": value, "a": str(a), "b": str(b), "skipped": len(skipped)}))
    for path, reason in skipped:
        click.echo(f"skipped {path}: {reason}", err=True)


def _save(stats, path) -> Path:
    """Write the statistics atomically (an interrupted or failed write keeps the old file; a full disk is an
    OutputError naming the file)."""
    from cascadekit.codec.fsio import atomic_write

    return atomic_write(path, stats.write)
