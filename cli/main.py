"""The `cascadekit` command group.

Subcommands live in their own modules and are imported lazily, so `cascadekit --help` is fast and a
broken optional dependency of one command never breaks the others.
"""
from __future__ import annotations

import importlib

import click

# command name -> (module, attribute, the one line `cascadekit --help` shows: listing the commands imports none of
# them, since importing one pulls in torch and its models: seconds of start-up)
COMMANDS = {
    "reconstruct": ("cascadekit.cli.reconstruct", "reconstruct", "Reconstruct images (encode + decode) into PNGs and a grid."),
    "encode": ("cascadekit.cli.encode", "encode", "Encode image folders, tar shards or manifests into a latent store."),
    "inspect": ("cascadekit.cli.inspect_store", "inspect_store", "Report on a store and write preview.png."),
    "evaluate": ("cascadekit.cli.evaluate", "evaluate", "Measure PSNR, SSIM, LPIPS and FID of the codec; HTML report."),
    "fid": ("cascadekit.cli.fid", "fid", "FID between two image folders or saved statistics."),
    "embed-text": ("cascadekit.cli.embed_text", "embed_text", "Add CLIP text embeddings of the captions to a store."),
    "add-controls": ("cascadekit.cli.add_controls", "add_controls", "Add ControlNet controls to a store without re-encoding."),
    "train": ("cascadekit.cli.train", "train", "Train the Stage C prior (or a ControlNet, Stage B) on a store."),
    "sample": ("cascadekit.cli.sample", "sample", "Generate images for prompts (Stage C -> Stage B -> Stage A)."),
    "upscale": ("cascadekit.cli.upscale", "upscale", "Upscale an image 2x with the super-resolution ControlNet."),
    "export": ("cascadekit.cli.export", "export", "Export a trained Stage C, Stage B or ControlNet."),
    "compare": ("cascadekit.cli.compare", "compare", "Compare evaluate reports: means, intervals, grids side by side."),
    "app": ("cascadekit.cli.app", "app", "Start the local web app on 127.0.0.1."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name, (mod, _, _) in COMMANDS.items() if importlib.util.find_spec(mod) is not None)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        if importlib.util.find_spec(module) is None:
            return None
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        """The command list of ``--help`` from :data:`COMMANDS`' summaries (click's own imports every command)."""
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cascadekit")
def main():
    """cascadekit: Stable Cascade latent datasets, codec metrics, Stage C training and text-to-image."""


if __name__ == "__main__":
    main()
