"""The ``eseg`` Typer application and its root options; the command modules register their commands on it."""

from __future__ import annotations

import typer

from eseg_cli import __version__
from eseg_cli.cli import _common
from eseg_cli.cli._common import EsegTyper, console

app = EsegTyper(
    name="eseg",  # the help text is the root callback's docstring (with its examples)
    rich_markup_mode="rich",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        console.print(f"eseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of an error (also: ESEG_DEBUG=1)."),
):
    """[bold]eseg[/]: the ESeg family (Meng et al., 2022) — models, data, training and the paper workbench.

    Examples:

      [cyan]eseg train -s lite-s -o runs/quickstart --yes[/] train on the synthetic set

      [cyan]eseg eval -c runs/quickstart --mode slide[/]     crop from the run's config

      [cyan]eseg profile --scale S[/]                        params, FLOPs, latency

      [cyan]eseg ablate levels --cell P3-P7[/]               one ablation cell

      [cyan]eseg report --results runs/ --yes[/]             tables, figures, report.html

      [cyan]eseg COMMAND --help[/]                           options and their defaults
    """
    _common.DEBUG = debug
