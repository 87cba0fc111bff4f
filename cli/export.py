"""`cascadekit export RUN_OR_FILE --to diffusers|official --out DIR`: Stage C / Stage B / ControlNet weights for
diffusers (``StableCascadeUNet`` folder) or the official code and ComfyUI (one official-key ``.safetensors``)."""
from __future__ import annotations

import click

from cascadekit.cli.common import reports_user_errors
from cascadekit.cli.out_folder import OutputKind, check_out_folder
from cascadekit.cli.params import OUT_FOLDER

EXPORT = OutputKind("export", "export.json", ("config.json", "diffusion_pytorch_model.safetensors", "*.safetensors"))


@click.command("export")
@click.argument("source", metavar="RUN_OR_FILE", type=click.Path(exists=True))
@click.option("--to", "to", required=True, type=click.Choice(["diffusers", "official"]),
              help="diffusers: config.json + diffusion_pytorch_model.safetensors (StableCascadeUNet.from_pretrained); "
                   "official: one .safetensors in official key names (official code, ComfyUI).")
@click.option("--out", "out", required=True, type=OUT_FOLDER, help="Output folder (new or empty; an earlier export needs --overwrite).")
@click.option("--dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]), help="Precision of the written tensors.")
@click.option("--ema", is_flag=True, help="Export a training checkpoint's EMA weights.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in --out.")
@reports_user_errors
def export(source, to, out, dtype, ema, overwrite):
    """Export the Stage C, Stage B or ControlNet at RUN_OR_FILE (a `cascadekit train` run, a checkpoint folder,
    a weights file or a diffusers model folder) into --out."""
    check_out_folder(out, EXPORT, overwrite)
    from cascadekit.generator.export import export_weights  # torch: imported once the arguments are checked

    result = export_weights(source, out, to, dtype=dtype, ema=ema, overwrite=overwrite)
    click.echo(f"exported {result.kind} ({result.preset}) from {result.source} to {to}:")
    for f in result.files:
        click.echo(f"  {f}")
