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
