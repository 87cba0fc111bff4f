"""cascadekit.cli: the `cascadekit` command line (a thin click layer over the packages)."""
