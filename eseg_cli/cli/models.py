"""``eseg models``: the registry and Table 3."""

from __future__ import annotations

import typer
from rich.table import Table

from eseg_cli.cli._app import app
from eseg_cli.cli._common import console, print_json


@app.command("models", rich_help_panel="Models")
def models_cmd(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """List the registered models with Table 3's scaling.

    Example: [cyan]eseg models[/]
    """
    from eseg_cli.models import SCALES, list_models

    rows = []
    for name in list_models():
        s = SCALES.get(name)
        rows.append({"model": name, "paper_name": s.display_name if s else name,
                     "width": s.width if s else None, "depth": s.depth if s else None,
                     "channels": s.channels if s else None, "repeats": s.repeats if s else None})
    if json_out:
        print_json(rows)
        return
    t = Table(title="eseg models (Table 3)")
    for col in ("model", "paper name", "encoder width", "encoder depth", "decoder channels", "decoder repeats"):
        t.add_column(col)
    for r in rows:
        t.add_row(*(str(v) if v is not None else "-" for v in r.values()))
    console.print(t)
