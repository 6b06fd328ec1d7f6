"""``eseg pseudo-label``: a teacher checkpoint labels unlabelled images for self-training."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from eseg_cli.cli._app import app
from eseg_cli.cli._common import (
    AMPS,
    CROP_OPTION,
    FLIP_OPTION,
    MODE_OPTION,
    MODES,
    SCALES_OPTION,
    STRIDE_OPTION,
    THREADS_HELP,
    complete_device,
    console,
    err_console,
    inference_mode,
    print_json,
    value,
)


@app.command("pseudo-label", rich_help_panel="Train and evaluate")
def pseudo_label_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="The teacher: a .pt file or a run folder."),
    images: list[str] = typer.Option(..., "--images", "-i", help="A folder (searched recursively), a glob "
                                                                 "pattern or an image file; repeatable."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: a folder dataset (images/, masks/, "
                                                      "classes.txt) plus pseudo_label.json."),
    threshold: float = typer.Option(0.5, "--threshold", "-t", min=0.0, max=1.0,
                                    help="Keep a pixel's class where the teacher's top probability is at least "
                                         "this; 255 (ignore) elsewhere."),
    mode: MODES = MODE_OPTION,
    crop: Optional[str] = CROP_OPTION,
    stride: Optional[str] = STRIDE_OPTION,
    scales: str = SCALES_OPTION,
    flip: bool = FLIP_OPTION,
    split: str = typer.Option("train", "--split", help="Split folder name in the output layout."),
    device: str = typer.Option("auto", "--device", autocompletion=complete_device, help="auto, cpu or cuda[:N]."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    amp: Optional[AMPS] = typer.Option(None, "--amp", case_sensitive=False, help="bf16 or fp16 autocast (default: "
                                                                                 "none, float32)."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the raw weights even if the checkpoint has EMA ones."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="A progress bar on a terminal; plain "
                                                                         "lines without."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Label images with a teacher for self-training; pixels below --threshold become 255 (ignore).

    Resumable: run it again with the same teacher and settings and finished images are skipped.
    Train a student on the result with [cyan]eseg train --extra-data OUT[/].

    Examples:

      [cyan]eseg pseudo-label -c runs/teacher -i data/cityscapes/leftImg8bit/train_extra -o data/pl[/]

      [cyan]eseg pseudo-label -c best.pt -i 'frames/*.jpg' -o data/pl --mode msflip --threshold 0.7 --json[/]
    """
    amp = value(amp)
    import torch

    from eseg_cli.cli._progress import ProgressReporter, use_bar
    from eseg_cli.engine.pseudo_label import pseudo_label

    if threads:
        torch.set_num_threads(threads)
    modes = inference_mode(mode, crop, stride, scales, flip)
    with ProgressReporter(bar=use_bar(progress), quiet=json_out) as on_event:
        summary = pseudo_label(checkpoint, images, out, threshold=threshold, **modes, split=split, device=device,
                               amp=amp, use_ema=not no_ema, on_event=on_event)
    if json_out:
        print_json(summary)
        return
    from rich.table import Table

    t = Table(title=f"pseudo-labels in {summary['out']} (threshold {summary['threshold']}, {summary['mode']})")
    for col in ("class", "predicted px", "kept px", "kept"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for row in summary["per_class"]:
        frac = "-" if row["kept_fraction"] is None else f"{100 * row['kept_fraction']:.1f}%"
        t.add_row(row["class"], str(row["predicted_pixels"]), str(row["kept_pixels"]), frac)
    console.print(t)
    err_console.print(f"[green]done[/]: {summary['images']} images ({summary['labelled']} labelled, "
                      f"{summary['skipped']} already done), {100 * summary['kept_fraction']:.1f}% of pixels kept; "
                      f"train with [cyan]--extra-data {summary['out']}[/]")
