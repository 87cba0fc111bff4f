"""The `cascadekit` command group.

Subcommands live in their own modules and are imported lazily, so `cascadekit --help` is fast and a
broken optional dependency of one command never breaks the others.
"""
from __future__ import annotations

import importlib

import click

# command name -> (module, attribute)
COMMANDS = {
    "reconstruct": ("cascadekit.cli.reconstruct", "reconstruct"),
    "encode": ("cascadekit.cli.encode", "encode"),
    "inspect": ("cascadekit.cli.inspect_store", "inspect_store"),
    "evaluate": ("cascadekit.cli.evaluate", "evaluate"),
    "fid": ("cascadekit.cli.fid", "fid"),
    "embed-text": ("cascadekit.cli.embed_text", "embed_text"),
    "add-controls": ("cascadekit.cli.add_controls", "add_controls"),
    "train": ("cascadekit.cli.train", "train"),
    "sample": ("cascadekit.cli.sample", "sample"),
    "upscale": ("cascadekit.cli.upscale", "upscale"),
    "export": ("cascadekit.cli.export", "export"),
    "compare": ("cascadekit.cli.compare", "compare"),
    "app": ("cascadekit.cli.app", "app"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name, (mod, _) in COMMANDS.items() if importlib.util.find_spec(mod) is not None)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        if importlib.util.find_spec(module) is None:
            return None
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cascadekit")
def main():
    """cascadekit: Stable Cascade latent datasets, codec metrics, Stage C training and text-to-image."""


if __name__ == "__main__":
    main()
