"""`--help` of the commands with finite-float options shows a real range or none (never click's `x<=None`)."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from cascadekit.cli.main import main
from cascadekit.cli.params import FINITE, FiniteFloat


def test_finite_float_range_text():
    assert FINITE._describe_range() == ""
    assert FiniteFloat(min=0, min_open=True)._describe_range() == "x>0"
    assert FiniteFloat(min=0, max=1, min_open=True)._describe_range() == "0<x<=1"


@pytest.mark.parametrize("command", ["sample", "reconstruct", "evaluate", "upscale"])
def test_help_has_no_none_range(command):
    r = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "None]" not in r.output and "x<=None" not in r.output and "--guidance" in r.output


def test_a_finite_option_still_refuses_nan():
    @click.command()
    @click.option("--g", type=FINITE, default=1.0, show_default=True)
    def cmd(g):
        click.echo(g)

    r = CliRunner().invoke(cmd, ["--g", "nan"])
    assert r.exit_code == 2 and "not a finite number" in r.output


def test_group_help_lists_every_command_without_importing_them():
    """`cascadekit --help` shows each command's summary from COMMANDS and imports no command module (each pulls in
    torch: seconds of start-up); a fresh interpreter, so nothing this test session imported counts."""
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from cascadekit.cli.main import COMMANDS, main; "
            "r = CliRunner().invoke(main, ['--help'], terminal_width=200); assert r.exit_code == 0, r.output; "
            "missing = [n for n, (_, _, s) in COMMANDS.items() if n not in r.output or s not in r.output]; "
            "assert not missing, missing; "
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m in {v[0] for v in COMMANDS.values()}); "
            "assert not loaded, loaded")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_command_summaries_name_real_commands():
    """Every COMMANDS entry resolves to a click command (a renamed module or attribute is caught here)."""
    import importlib

    from cascadekit.cli.main import COMMANDS

    for name, (module, attr, summary) in COMMANDS.items():
        assert isinstance(getattr(importlib.import_module(module), attr), click.Command), name
        assert summary.endswith(".") and len(summary) <= 80, name
