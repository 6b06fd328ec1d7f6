"""``eseg ablate``: Table 8's encoder x decoder grid, BiFPN level ranges and fusion modes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from eseg_cli.cli import app
from eseg_cli.cli._common import (
    CELLS,
    THREADS_HELP,
    complete_device,
    complete_model,
    console,
    human,
    parse_sets,
    print_json,
    set_threads,
    value,
)


@app.command("ablate", rich_help_panel="Paper workbench")
def ablate_cmd(
    kind: str = typer.Argument(..., help="decoder (Table 8), levels (P3-P7 ... P2-P9) or fusion."),
    out: Path = typer.Option(Path("runs/ablate"), "--out", "-o",
                             help="Output folder; rows go to <out>/<kind>/results.jsonl."),
    resolution: str = typer.Option("1024x2048", "--resolution", "-r", help="Input HxW for FLOPs (paper: 1024x2048)."),
    scale: str = typer.Option("s", "--scale", "-s", metavar="NAME", autocompletion=complete_model,
                              help="ESeg scale of the levels/fusion ablations (any case)."),
    cells: Optional[list[CELLS]] = typer.Option(None, "--cell", case_sensitive=False,
                                                help="Run only this cell (repeatable; any case, e.g. P3-P7)."),
    num_classes: int = typer.Option(19, "--num-classes", min=1, help="Classifier outputs."),
    train: bool = typer.Option(False, "--train", help="Also train every cell and record its eval mIoU."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1,
                                        help="Training steps per cell (with --train); default: a short schedule that "
                                             "ranks the cells (eseg_cli.analysis.ablate.ABLATION_STEPS)."),
    dataset: str = typer.Option("synthetic", "--dataset", "-d", help="Training dataset (with --train)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset root (synthetic: generated)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Training recipe YAML shared by every cell."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Training config override KEY=VALUE (YAML "
                                             "value, repeatable), e.g. --set batch_size=2 --set crop_size=[128,128]."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse cached params/FLOPs measurements."),
    device: Optional[str] = typer.Option(None, "--device", autocompletion=complete_device,
                                         help="Training device of every cell (with --train; default: the recipe's). "
                                              "FLOPs are counted on the CPU."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
):
    """Run an ablation: params, FLOPs and (with --train) mIoU of every cell.

    One row per cell is appended to <out>/<kind>/results.jsonl; rerunning skips the cells already finished.

    Examples:

      [cyan]eseg ablate decoder --json[/]                     Table 8's FLOPs

      [cyan]eseg ablate levels --train --steps 500[/]          train P3-P7 ... P2-P9 on the synthetic set

      [cyan]eseg ablate fusion -r 512x1024 --cell sum[/]

      [cyan]eseg ablate decoder --train --steps 30 --set crop_size=[128,128] --set max_val_images=10[/]
    """
    cells = [value(c) for c in cells] if cells else None
    set_threads(threads)
    from eseg_cli.analysis.ablate import run_ablation
    from eseg_cli.cli._progress import ProgressReporter, use_bar
    from eseg_cli.utils import parse_size

    res = parse_size(resolution, "--resolution")
    folder = out / kind
    overrides = parse_sets(sets or [])
    if device:
        overrides["device"] = device

    with ProgressReporter(bar=use_bar(), quiet=json_out) as on_event:
        rows = run_ablation(kind, folder, scale=scale, resolution=res, num_classes=num_classes, cells=cells,
                            train=train, steps=steps, dataset=dataset, data_root=data_root, recipe=recipe,
                            train_overrides=overrides or None, use_cache=cache, on_event=on_event)
    if json_out:
        print_json(rows)
        return
    t = Table(title=f"eseg ablate {kind} — fvcore multiply-adds at {res[0]}x{res[1]}: total, conv only, "
                    "the paper's, Δ% vs the paper", box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ["cell", "params", "FLOPs", "conv", "paper", "Δ%", "Δ%conv"]
    if train or any(r.get("miou") is not None for r in rows):
        cols += ["final mIoU", "paper"]
    for c in cols:
        t.add_column(c, justify="left" if c == "cell" else "right", no_wrap=c == "cell")
    def pct(v):
        return "-" if v is None else f"{v:+.1f}"

    for r in rows:
        # human(): FLOPs of a small input read 1.23M, not 0.0B
        line = [r["cell"], human(r["params"]), human(r["flops"]), human(r["flops_conv"]),
                human(r["paper_flops"]) if r.get("paper_flops") else "-", pct(r.get("flops_diff_pct")),
                pct(r.get("flops_conv_diff_pct"))]
        if len(cols) > 7:
            line += ["-" if r.get("miou") is None else f"{r['miou']:.1f}",
                     "-" if r.get("paper_miou") is None else f"{r['paper_miou']:.1f}"]
        t.add_row(*line)
    console.print(t)
    console.print(f"[dim]rows in {folder / 'results.jsonl'}[/]")
    if kind == "decoder":
        console.print("[dim]ResNet-50 w/ atrous (324.3B in the paper) is not reproduced by any DeepLabV3+ "
                      "recipe that fits the other rows; see eseg_cli/models/deeplab.py[/]")
