"""``eseg profile``: parameters, FLOPs, latency and peak memory."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from eseg_cli.cli._app import app
from eseg_cli.cli._common import (
    AMPS,
    THREADS_HELP,
    complete_device,
    complete_model,
    console,
    err_console,
    human,
    print_json,
    value,
)


@app.command("profile", rich_help_panel="Models")
def profile_cmd(
    scale: Optional[str] = typer.Option(None, "--scale", "-s", metavar="NAME", autocompletion=complete_model,
                                        help="lite-s, lite-m, lite-l, s, m or l (any case), or a registered model "
                                             "name (`eseg models`)."),
    all_: bool = typer.Option(False, "--all", help="Profile every ESeg scale into one table."),
    resolution: str = typer.Option("1024x2048", "--resolution", "-r", help="Input HxW for FLOPs (and latency)."),
    num_classes: int = typer.Option(19, "--num-classes", min=1, help="Classifier outputs."),
    flops: bool = typer.Option(True, "--flops/--no-flops", help="Count FLOPs with fvcore."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Time forward passes."),
    latency_resolution: Optional[str] = typer.Option(None, "--latency-resolution",
                                                     help="Input HxW for timing, if not --resolution."),
    runs: int = typer.Option(10, "--runs", min=1, help="Timed runs (the median is reported)."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed warm-up runs."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    device: str = typer.Option("auto", "--device", autocompletion=complete_device,
                               help="auto (cuda if present), cpu or cuda[:N]."),
    eager: bool = typer.Option(False, "--eager", help="Time model(x) as built instead of the inference path "
                                                      "(folded, channels_last, fast exact upsample + argmax)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="With --eager: channels_last memory format."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model first."),
    fuse_bn: bool = typer.Option(False, "--fuse-bn", help="With --eager: fold batch norm into the convs."),
    amp: Optional[AMPS] = typer.Option(None, "--amp", case_sensitive=False,
                                       help="Autocast dtype: bf16 or fp16 (default: none, float32)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON (an object, or a list with --all)."),
):
    """Parameters, FLOPs (fvcore multiply-adds), median latency and peak memory.

    Examples:

      [cyan]eseg profile --scale S[/]

      [cyan]eseg profile --all --resolution 512x1024 --no-latency --json[/]

      [cyan]eseg profile -s lite-s -r 1024x2048 --latency-resolution 512x1024 --channels-last[/]
    """
    amp = value(amp)
    from eseg_cli.analysis.profiler import profile_model
    from eseg_cli.errors import EsegError
    from eseg_cli.models import SCALES, model_name
    from eseg_cli.utils import parse_size

    res = parse_size(resolution, "--resolution")
    lat_res = parse_size(latency_resolution, "--latency-resolution") if latency_resolution else None
    if all_ == bool(scale):
        raise EsegError("give exactly one of --scale NAME or --all")
    names = list(SCALES) if all_ else [model_name(scale, field="scale")]
    results = []
    for name in names:
        if not json_out:
            err_console.print(f"[dim]profiling {name} at {res[0]}x{res[1]}...[/]")
        results.append(profile_model(
            name, resolution=res, num_classes=num_classes, flops=flops, latency=latency, latency_resolution=lat_res,
            runs=runs, warmup=warmup, threads=threads, device=device, channels_last=channels_last,
            compile=compile_, amp=amp, fuse_bn=fuse_bn, eager=eager))
    if json_out:
        print_json(results if all_ else results[0])
        return
    t = Table(title="eseg profile" + (f" — FLOPs: fvcore multiply-adds at {res[0]}x{res[1]}" if flops else ""))
    cols = ["model", "params"] + (["FLOPs (total)", "FLOPs (conv only)"] if flops else [])
    if latency:
        cols += ["latency (ms)", "FPS", "peak mem (MB)"]
    for c in cols:
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in results:
        row = [r["model"], human(r["params"])] + ([human(r["flops"]), human(r["flops_conv"])] if flops else [])
        if latency:
            row += [f"{r['latency_ms']:.1f}", f"{r['fps']:.1f}", f"{r['peak_memory_mb']:.0f}"]
        t.add_row(*row)
    console.print(t)
    skipped = sorted({op for r in results for op in r.get("skipped_ops", {})})
    if skipped:
        console.print(f"[dim]ops fvcore skipped (not counted): {', '.join(skipped)}[/]")
    if latency:
        r = results[0]
        console.print(f"[dim]latency: median of {r['runs']} runs after {r['warmup']} warm-up, batch 1, "
                      f"{r['latency_resolution']}, {r['device']}, {r['path']}; memory = {r['peak_memory_kind']}[/]")
        if r.get("precision_note"):
            console.print(f"[dim]{r['precision_note']}[/]")

