"""``eseg plot``: Figure 1, Figure 4, training curves and a run's confusion matrix and per-class IoU, as PNG
and SVG."""

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
    print_json,
    set_threads,
)

_FIGURES = ("figure1", "figure4", "curves", "seeds")
_STEMS = {"curves": "training_curves", "seeds": "ablation_seeds"}


@app.command("plot", rich_help_panel="Paper workbench")
def plot_cmd(
    results: Optional[list[Path]] = typer.Option(None, "--results", help="Run folders / `eseg ablate` output "
                                                 "(repeatable): training curves and measured mIoU."),
    out: Path = typer.Option(Path("reports/figures"), "--out", "-o", help="Folder for the PNG and SVG files."),
    profiles: Optional[list[Path]] = typer.Option(None, "--profile", help=PROFILES_HELP),
    measure_fps: bool = typer.Option(False, "--measure-fps", help="Time ESeg-Lite-S/M/L on this device for Figure 4."),
    fps_resolution: str = typer.Option("1024x2048", "--fps-resolution", help="Input HxW for --measure-fps."),
    device: str = typer.Option("auto", "--device", autocompletion=complete_device,
                               help="Device for --measure-fps: auto, cpu or cuda[:N]."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    runs: int = typer.Option(5, "--runs", min=1, help="Timed runs per model for --measure-fps."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="figure1, figure4, curves or seeds (each "
                                             "ablation cell's final mIoU per seed, mean ± std) (repeatable)."),
    confusion: Optional[list[Path]] = typer.Option(None, "--confusion", help="A run folder (repeatable): its "
                                                   "row-normalised confusion matrix and per-class IoU bars, from "
                                                   "its `eseg eval` output, as <out>/<run>_confusion.png and "
                                                   "<run>_per_class_iou.png (alone unless --only is given)."),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Measure FLOPs not yet cached."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Overwrite existing figures without asking."),
    json_out: bool = typer.Option(False, "--json", help="Print the plotted points and files as JSON."),
):
    """Draw Figure 1 (FLOPs vs mIoU), Figure 4 (FPS vs mIoU), training curves (seeds: mean and band) and each
    ablation cell's final mIoU per seed, PNG and SVG.

    Examples:

      [cyan]eseg plot --yes[/]                                   Figures 1 and 4 into reports/figures

      [cyan]eseg profile -s lite-s --json > p.json && eseg plot --profile p.json --only figure4[/]

      [cyan]eseg plot --results runs/ablate --only curves --only seeds[/]   curves and per-seed mIoU of an ablation

      [cyan]eseg eval -c runs/quickstart && eseg plot --confusion runs/quickstart[/]   confusion + per-class IoU
    """
    set_threads(threads)
    from eseg_cli.analysis.plot import generate_figures
    from eseg_cli.errors import EsegError
    from eseg_cli.utils import parse_size

    run_files = _run_figures(confusion or [], out, yes)
    if confusion and not only:
        if json_out:
            print_json({"files": run_files})
        else:
            for f in run_files:
                console.print(f"[green]wrote[/] {f}")
        return
    which = tuple(only) if only else _FIGURES
    bad = sorted(set(which) - set(_FIGURES))
    if bad:
        raise EsegError(f"--only {', '.join(bad)}: choose from {', '.join(_FIGURES)}")
    existing = [out / f"{_STEMS.get(w, w)}.png" for w in which]
    if "curves" in which:  # one figure per ablation when the runs come from several
        existing += sorted(out.glob("training_curves_*.png"))
    for p in existing:
        confirm_overwrite(p, yes, "the figure")
    summary = generate_figures(results or [], out, profiles=profiles or [], measure_fps_now=measure_fps,
                               fps_resolution=parse_size(fps_resolution, "--fps-resolution"), device=device,
                               runs=runs, measure_missing=measure, which=which)
    summary["files"] = run_files + summary["files"]
    if json_out:
        print_json(summary)
        return
    for f in summary["files"]:
        console.print(f"[green]wrote[/] {f}")
    for name, why in summary["skipped"].items():
        console.print(f"[yellow]skipped {name}:[/] {why}")


def _run_figures(runs: list[Path], out: Path, yes: bool) -> list[str]:
    """``--confusion``: each run's confusion matrix and per-class IoU bars into ``out``; the files written."""
    from eseg_cli.analysis.plot import _mpl
    from eseg_cli.analysis.runs import confusion_figure, per_class_figure, read_run_record
    from eseg_cli.errors import EsegError
    from eseg_cli.run import Run

    records = []
    for path in runs:
        if not Run(path).holds_run():
            raise EsegError(f"--confusion {path}: not a run folder (it holds no config.yaml, logs or checkpoints)")
        rec = read_run_record(path)
        if not rec.confusions:
            raise EsegError(f"--confusion {path}: no confusion matrix yet; run `eseg eval --checkpoint {path}` "
                            "first (it writes eval_<mode>_confusion.csv)")
        records.append(rec)
    for rec in records:
        for stem in ("confusion", "per_class_iou"):
            confirm_overwrite(out / f"{rec.name}_{stem}.png", yes, "the figure")
    files: list[str] = []
    for rec in records:
        for drawn in (confusion_figure(rec, out), per_class_figure(rec, out)):
            if drawn:
                fig, _, paths = drawn[1]
                _mpl().close(fig)
                files += [str(p) for p in paths]
    return files
