"""The command line as a whole: every listed command works and documents an example."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from eseg_cli.cli import app

runner = CliRunner()


def _commands() -> list[str]:
    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_expected_commands_are_listed():
    assert {"profile", "models"} <= set(_commands())


@pytest.mark.parametrize("name", _commands())
def test_every_command_has_help_with_an_example(name):
    res = runner.invoke(app, [name, "--help"])
    assert res.exit_code == 0, res.output
    assert "eseg " + name in res.output  # an example invocation
    assert "Example" in res.output


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "eseg_cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("eseg ")


def test_models_json():
    import json

    res = runner.invoke(app, ["models", "--json"])
    rows = json.loads(res.stdout)
    assert rows[3] == {"model": "eseg-s", "paper_name": "ESeg-S", "width": 1.0, "depth": 1.1, "channels": 96,
                       "repeats": 4}
