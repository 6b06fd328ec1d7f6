"""``eseg report``: the paper's Tables 3, 4, 5 and 8 beside this build's measurements."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from eseg_cli.cli._app import app
from eseg_cli.cli._common import (
    PROFILES_HELP,
    THREADS_HELP,
    complete_device,
    confirm_overwrite,
    console,
    err_console,
    print_json,
)


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
    profiles: Optional[list[Path]] = typer.Option(None, "--profile", help=PROFILES_HELP),
    html: bool = typer.Option(True, "--html/--no-html", help="Also write <out>/report.html: one self-contained "
                              "page with every table, figure and run (default: on)."),
    samples: int = typer.Option(3, "--samples", min=0, help="Sample predictions per run with a checkpoint in the "
                                "HTML page (0: none)."),
    wide: bool = typer.Option(False, "--wide", help="Print every column in the terminal (default: a narrow view "
                              "of each table; the files always have every column)."),
    device: str = typer.Option("cpu", "--device", autocompletion=complete_device,
                               help="Device for the HTML page's sample predictions."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Overwrite existing generated tables without asking."),
    json_out: bool = typer.Option(False, "--json", help="Print the tables as JSON."),
):
    """Regenerate the paper's Tables 3, 4, 5 and 8 beside measured values (Markdown, CSV, LaTeX).

    Params/FLOPs are measured (and cached); mIoU/pixAcc come from --results; difference columns follow.

    Examples:

      [cyan]eseg report --yes[/]                             every table and figure, into reports/

      [cyan]eseg report --results runs/ablate --out reports/ --yes[/]   with Table 8's trained mIoU

      [cyan]eseg report --results runs/quickstart --no-figures --wide[/]   every column, and report.html
    """
    from eseg_cli.analysis.report import TABLE_TITLES, build_tables, narrow, to_rich, write_tables

    if threads:
        import torch

        torch.set_num_threads(threads)
    confirm_overwrite(out / "tables.md", yes, "the generated tables")
    import json

    def say_measuring():  # only when something is not cached, and only once every results file has been read
        if not json_out:
            err_console.print("[dim]measuring params/FLOPs not in the cache (cached after the first run)...[/]")

    tables = build_tables(results or [], measure_missing=measure, on_first_measure=say_measuring)
    if html or figures:  # every input read before the first write: a damaged run is named, nothing half-written
        from eseg_cli.analysis.html_report import read_inputs

        read_inputs(results or [], profiles or [])
    summary = {"tables": {k: json.loads(v.to_json(orient="records")) for k, v in tables.items()},
               "files": [str(f) for f in write_tables(tables, out)]}
    if html:
        from eseg_cli.analysis.html_report import write_html_report

        if not json_out:
            err_console.print("[dim]drawing the HTML report...[/]")
        summary["files"].append(str(write_html_report(tables, out / "report.html", results=results or [],
                                                      profiles=profiles or [], samples=samples, device=device)))
    if figures:
        from eseg_cli.analysis.plot import generate_figures

        figs = generate_figures(results or [], out / "figures", profiles=profiles or [], measure_missing=measure)
        summary["files"] += figs["files"]
        summary["figures_skipped"] = figs["skipped"]
    if json_out:
        print_json(summary)
        return
    for name, df in tables.items():
        console.print(to_rich(df if wide else narrow(name, df), TABLE_TITLES.get(name, name)))
    if not wide:
        console.print("[dim]narrow view; --wide prints every column (the .md/.csv/.tex files have them all)[/]")
    console.print(f"[green]wrote[/] {len(summary['files'])} files under {out}")
