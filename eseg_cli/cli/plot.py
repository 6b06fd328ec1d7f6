"""``eseg plot``: Figure 1, Figure 4 and training curves as PNG and SVG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from eseg_cli.cli import app
from eseg_cli.cli._common import THREADS_HELP, complete_device, confirm_overwrite, console, print_json, set_threads

_FIGURES = ("figure1", "figure4", "curves")


@app.command("plot", rich_help_panel="Paper workbench")
def plot_cmd(
    results: Optional[list[Path]] = typer.Option(None, "--results", help="Run folders / `eseg ablate` output "
                                                 "(repeatable): training curves and measured mIoU."),
    out: Path = typer.Option(Path("reports/figures"), "--out", "-o", help="Folder for the PNG and SVG files."),
    profiles: Optional[list[Path]] = typer.Option(None, "--profile", help="FPS for Figure 4's measured panel: "
                                                  "`eseg profile --json` output, a benchmark report "
                                                  "(benchmarks/peers.py) or a folder of them (repeatable)."),
    measure_fps: bool = typer.Option(False, "--measure-fps", help="Time ESeg-Lite-S/M/L on this device for Figure 4."),
    fps_resolution: str = typer.Option("1024x2048", "--fps-resolution", help="Input HxW for --measure-fps."),
    device: str = typer.Option("auto", "--device", autocompletion=complete_device,
                               help="Device for --measure-fps: auto, cpu or cuda[:N]."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    runs: int = typer.Option(5, "--runs", min=1, help="Timed runs per model for --measure-fps."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="figure1, figure4 or curves (repeatable)."),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Measure FLOPs not yet cached."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Overwrite existing figures without asking."),
    json_out: bool = typer.Option(False, "--json", help="Print the plotted points and files as JSON."),
):
    """Draw Figure 1 (FLOPs vs mIoU), Figure 4 (FPS vs mIoU) and training curves, PNG and SVG.

    Examples:

      [cyan]eseg plot --yes[/]                                   Figures 1 and 4 into reports/figures

      [cyan]eseg profile -s lite-s --json > p.json && eseg plot --profile p.json --only figure4[/]

      [cyan]eseg plot --results runs/ablate --only curves[/]     loss and mIoU vs step of the ablation runs
    """
    set_threads(threads)
    from eseg_cli.analysis.plot import generate_figures
    from eseg_cli.errors import EsegError
    from eseg_cli.utils import parse_size

    which = tuple(only) if only else _FIGURES
    bad = sorted(set(which) - set(_FIGURES))
    if bad:
        raise EsegError(f"--only {', '.join(bad)}: choose from {', '.join(_FIGURES)}")
    existing = [out / f"{w if w != 'curves' else 'training_curves'}.png" for w in which]
    for p in existing:
        confirm_overwrite(p, yes, "the figure")
    summary = generate_figures(results or [], out, profiles=profiles or [], measure_fps_now=measure_fps,
                               fps_resolution=parse_size(fps_resolution, "--fps-resolution"), device=device,
                               runs=runs, measure_missing=measure, which=which)
    if json_out:
        print_json(summary)
        return
    for f in summary["files"]:
        console.print(f"[green]wrote[/] {f}")
    for name, why in summary["skipped"].items():
        console.print(f"[yellow]skipped {name}:[/] {why}")
