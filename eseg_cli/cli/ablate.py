"""``eseg ablate``: Table 8's encoder x decoder grid, BiFPN level ranges and fusion modes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from eseg_cli.cli._app import app
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
    train: bool = typer.Option(False, "--train", help="Also train every cell and record its final val mIoU."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps per cell (with --train; "
                                        "default: the recipe's)."),
    n_seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Train every cell with seeds 0..N-1 (with "
                                          "--train): each changes init, data order and augmentation; cells share "
                                          "them, so differences pair."),
    seed_list: Optional[list[int]] = typer.Option(None, "--seed", min=0, help="Train every cell with this seed "
                                                  "(repeatable; instead of --seeds)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Name of the protocol whose --recipe this run "
                                           "follows (e.g. 'protocol v1'); runs shorter than the recipe's steps "
                                           "are reported as smoke."),
    aspp_scale: Optional[float] = typer.Option(None, "--aspp-scale",
                                               help="Multiply the DeepLabV3+ cells' ASPP rates (6/12/18 at OS16, "
                                                    "3/6/9 at OS32) by this (rounded, at least 1)."),
    decoder_norm: Optional[str] = typer.Option(None, "--decoder-norm", help="batch (the paper's) or group: "
                                               "GroupNorm in every cell's decoder and head (tiny top levels)."),
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
    json_out: bool = typer.Option(False, "--json", help="Print the rows and the per-cell aggregate over seeds "
                                  "(mean, std) as JSON."),
):
    """Run an ablation: params, FLOPs and (with --train) mIoU of every cell.

    One row per cell (per cell and seed with --train) is appended to <out>/<kind>/results.jsonl; rerunning skips
    the (cell, seed) pairs already finished, and a cell killed mid-training resumes from its last checkpoint.

    Examples:

      [cyan]eseg ablate decoder --json[/]                     Table 8's FLOPs

      [cyan]eseg ablate levels --train --steps 500 --seeds 3[/]   train P3-P7 ... P2-P9, seeds 0, 1, 2

      [cyan]eseg ablate fusion -r 512x1024 --cell sum[/]

      [cyan]eseg ablate decoder --train --steps 30 --set crop_size=[128,128] --set max_val_images=10[/]
    """
    cells = [value(c) for c in cells] if cells else None
    set_threads(threads)
    from eseg_cli.analysis.ablate import run_ablation
    from eseg_cli.analysis.stats import aggregate, claims, evaluate_claims, format_difference
    from eseg_cli.cli._progress import ProgressReporter, use_bar
    from eseg_cli.errors import EsegError
    from eseg_cli.utils import parse_size

    res = parse_size(resolution, "--resolution")
    if n_seeds and seed_list:
        raise EsegError("give --seeds N or --seed S (repeatable), not both", field="--seed")
    seeds = list(range(n_seeds)) if n_seeds else list(seed_list or []) or None
    folder = out / kind
    overrides = parse_sets(sets or [])
    if device:
        overrides["device"] = device

    with ProgressReporter(bar=use_bar(), quiet=json_out) as on_event:
        rows = run_ablation(kind, folder, scale=scale, resolution=res, num_classes=num_classes, cells=cells,
                            train=train, steps=steps, dataset=dataset, data_root=data_root, recipe=recipe,
                            train_overrides=overrides or None, use_cache=cache, seeds=seeds, protocol=protocol,
                            aspp_scale=aspp_scale, decoder_norm=decoder_norm, on_event=on_event)
    agg = aggregate(rows, kind)
    verdicts = evaluate_claims(rows, [c for c in claims() if c.ablation == kind]) if agg else []
    if json_out:
        print_json({"rows": rows, "aggregate": agg, "claims": [v.to_dict() for v in verdicts]})
        return
    t = Table(title=f"eseg ablate {kind} — fvcore multiply-adds at {res[0]}x{res[1]}: total, conv only, "
                    "the paper's, Δ% vs the paper", box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ["cell", "params", "FLOPs", "conv", "paper", "Δ%", "Δ%conv"]
    means = {c["cell"]: c for c in agg[0]["cells"]} if agg else {}
    if means:
        cols += ["final mIoU (mean ± std)", "seeds", "paper"]
    for c in cols:
        t.add_column(c, justify="left" if c == "cell" else "right", no_wrap=c == "cell")
    def pct(v):
        return "-" if v is None else f"{v:+.1f}"

    for r in {r["cell"]: r for r in rows}.values():  # one line per cell, its seeds aggregated
        # human(): FLOPs of a small input read 1.23M, not 0.0B
        line = [r["cell"], human(r["params"]), human(r["flops"]), human(r["flops_conv"]),
                human(r["paper_flops"]) if r.get("paper_flops") else "-", pct(r.get("flops_diff_pct")),
                pct(r.get("flops_conv_diff_pct"))]
        if means:
            c = means.get(r["cell"])
            line += [c["text"] if c else "-", str(c["n"]) if c else "-",
                     "-" if r.get("paper_miou") is None else f"{r['paper_miou']:.1f}"]
        t.add_row(*line)
    console.print(t)
    if agg:
        console.print(f"[dim]final val mIoU: {agg[0]['setting']}[/]")
    for v in verdicts:
        d = v.difference
        result = f"{format_difference(d)}: {d.verdict}" if d else f"no verdict ({v.setting or 'not trained'})"
        paper = f" (paper {v.claim.paper_diff:+.1f} on Cityscapes)" if v.claim.paper_diff is not None else ""
        console.print(f"  {v.claim.text}{paper}: {result}")
    if verdicts:
        console.print(f"[dim]every claim beside the paper's tables: eseg report --results {folder}[/]")
    console.print(f"[dim]rows in {folder / 'results.jsonl'}[/]")
    if kind == "decoder":
        console.print("[dim]ResNet-50 w/ atrous (324.3B in the paper) is not reproduced by any DeepLabV3+ "
                      "recipe that fits the other rows; see eseg_cli/models/deeplab.py[/]")

