"""The ``eseg`` command line. Each command only parses options and calls the library."""

from __future__ import annotations

from eseg_cli.cli._app import app

# Each command module registers itself on ``app`` when imported; the order is the order of the help panels.
# isort: off
from eseg_cli.cli import models as _models  # noqa: E402,F401
from eseg_cli.cli import profile as _profile  # noqa: E402,F401
from eseg_cli.cli import data as _data  # noqa: E402,F401
from eseg_cli.cli import train as _train  # noqa: E402,F401
from eseg_cli.cli import eval as _eval  # noqa: E402,F401
from eseg_cli.cli import predict as _predict  # noqa: E402,F401
from eseg_cli.cli import pseudo_label as _pseudo_label  # noqa: E402,F401
from eseg_cli.cli import ablate as _ablate  # noqa: E402,F401
from eseg_cli.cli import report as _report  # noqa: E402,F401
from eseg_cli.cli import plot as _plot  # noqa: E402,F401
# isort: on


def main() -> None:
    """Console-script entry point."""
    app()
