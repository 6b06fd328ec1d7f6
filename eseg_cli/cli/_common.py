"""What every command shares: the console, the error wrapper, JSON output, overwrite confirmation."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from eseg_cli.errors import EsegError

console = Console()
err_console = Console(stderr=True)


class EsegTyper(typer.Typer):
    """A Typer app whose commands turn :class:`EsegError` into a red one-line message and exit code 2."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(fn):
            @functools.wraps(fn)
            def wrapper(*a, **k):
                try:
                    return fn(*a, **k)
                except EsegError as e:
                    err_console.print(f"[bold red]Error:[/] {e}", highlight=False, soft_wrap=True)
                    raise typer.Exit(e.exit_code) from None

            register(wrapper)
            return fn

        return decorator


def print_json(obj: Any) -> None:
    """Machine output: one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def confirm_overwrite(path: Path, yes: bool, what: str = "it") -> None:
    """Ask before overwriting ``path``; without a terminal, refuse unless ``--yes`` was given."""
    if yes or not path.exists():
        return
    if sys.stdin is not None and sys.stdin.isatty():
        if typer.confirm(f"{path} exists. Overwrite {what}?", default=False):
            return
        raise typer.Exit(1)
    raise EsegError(f"{path} already exists; pass --yes to overwrite {what}, or choose another output")


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"
