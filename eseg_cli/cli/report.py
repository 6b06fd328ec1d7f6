"""``eseg report``: the paper's Tables 3, 4, 5 and 8 beside this build's measurements."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from eseg_cli.cli import app
from eseg_cli.cli._common import confirm_overwrite, console, err_console, print_json


@app.command("report", rich_help_panel="Paper workbench")
def report_cmd(
    results: Optional[list[Path]] = typer.Option(None, "--results", help="An `eseg ablate` output folder or "
                                                 "evaluation JSON (repeatable); fills the mIoU columns."),
    out: Path = typer.Option(Path("reports"), "--out", "-o", help="Writes <out>/tables/*.md|csv|tex and "
                             "<out>/tables.md."),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Measure params/FLOPs not yet cached "
                                 "(about a minute per model at 1024x2048 on a CPU)."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Also draw Figures 1 and 4 and the "
                                 "training curves into <out>/figures (see `eseg plot`)."),
    profiles: Optional[list[Path]] = typer.Option(None, "--profile", help="`eseg profile --json` output with "
                                                  "FPS for Figure 4 (repeatable)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Overwrite existing generated tables without asking."),
    json_out: bool = typer.Option(False, "--json", help="Print the tables as JSON."),
):
    """Regenerate the paper's Tables 3, 4, 5 and 8 beside measured values (Markdown, CSV, LaTeX).

    Params/FLOPs are measured (and cached); mIoU/pixAcc come from --results; difference columns follow.

    Examples:

      [cyan]eseg report --yes[/]                             every table and figure, into reports/

      [cyan]eseg report --results runs/ablate --out reports/ --yes[/]   with Table 8's trained mIoU
    """
    from eseg_cli.analysis.report import TABLE_TITLES, generate_report, to_markdown

    confirm_overwrite(out / "tables.md", yes, "the generated tables")
    if not json_out and measure:
        err_console.print("[dim]measuring params/FLOPs not in the cache (cached after the first run)...[/]")
    summary = generate_report(results or [], out, measure_missing=measure)
    if figures:
        from eseg_cli.analysis.plot import generate_figures

        figs = generate_figures(results or [], out / "figures", profiles=profiles or [], measure_missing=measure)
        summary["files"] += figs["files"]
        summary["figures_skipped"] = figs["skipped"]
    if json_out:
        print_json(summary)
        return
    import pandas as pd

    for name, recs in summary["tables"].items():
        console.rule(TABLE_TITLES.get(name, name))
        console.print(to_markdown(pd.DataFrame(recs)), markup=False, highlight=False)
    console.print(f"[green]wrote[/] {len(summary['files'])} files under {out}")
