"""`cascadekit compare REPORT... --out DIR`: evaluation reports side by side (cascadekit.metrics.compare_reports)."""
from __future__ import annotations

from pathlib import Path

import click

from cascadekit.cli.common import reports_user_errors
from cascadekit.cli.out_folder import OutputKind, check_out_folder, remove_outputs
from cascadekit.cli.params import COUNT, NON_NEGATIVE, OUT_FOLDER, SEED

COMPARE = OutputKind("compare", "compare.json", ("compare_per_image.csv", "index.html", "grids/*.png"))
REPORT = click.Path(exists=True, file_okay=False)


@click.command("compare")
@click.argument("reports", nargs=-1, required=True, type=REPORT)
@click.option("--out", "out", required=True, type=OUT_FOLDER,
              help="Comparison folder (created). A folder with an earlier comparison needs --overwrite.")
@click.option("--overwrite", is_flag=True, help="Remove the outputs of an earlier `compare` run in --out first.")
@click.option("--label", "labels", multiple=True,
              help="A name per report, in order (default: the folder names). Give it once per REPORT.")
@click.option("--intersect", is_flag=True,
              help="Reports over different image sets: compare the images they share (refused otherwise).")
@click.option("--bootstrap", "n_boot", default=2000, show_default=True, type=COUNT, help="Bootstrap resamples.")
@click.option("--confidence", default=0.95, show_default=True, type=click.FloatRange(0, 1, min_open=True,
                                                                                       max_open=True))
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the bootstrap.")
@click.option("--grids", "grid_limit", default=16, show_default=True, type=NON_NEGATIVE,
              help="Images whose grids are shown next to each other.")
@reports_user_errors
def compare(reports, out, overwrite, labels, intersect, n_boot, confidence, seed, grid_limit):
    """Compare two or more `cascadekit evaluate` REPORT folders (the first is the baseline): means with
    bootstrap intervals, paired per-image differences, the same images' grids side by side. Writes
    compare.json, compare_per_image.csv, grids/ and index.html into --out."""
    from cascadekit.metrics.compare_reports import CompareSettings, plan_comparison, write_comparison

    if len(reports) < 2:
        raise click.UsageError("give two or more REPORT folders")
    if labels and len(labels) != len(reports):
        raise click.BadParameter(f"{len(labels)} labels for {len(reports)} reports; give one per REPORT",
                                 param_hint="--label")
    settings = CompareSettings(intersect=intersect, n_boot=n_boot, confidence=confidence, seed=seed,
                               grid_limit=grid_limit)
    earlier = check_out_folder(out, COMPARE, overwrite)
    plan = plan_comparison(list(reports), list(labels) or None, settings)
    remove_outputs(Path(out), earlier, COMPARE)  # --overwrite: the earlier comparison goes once the checks passed
    summary = write_comparison(plan, out, settings)
    for m in summary["metrics"]:
        for lb, d in summary["paired_differences"][m].items():
            click.echo(f"{m.upper():5s} {lb} - {summary['baseline']}: {d['mean']:+.4f} [{d['low']:+.4f}, "
                       f"{d['high']:+.4f}] over {d['n']} images" if d["mean"] is not None else f"{m.upper()} -")
    click.echo(f"wrote {out}/index.html ({summary['n_images_compared']} images)")
