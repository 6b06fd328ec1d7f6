"""``eseg eval``: metrics of a checkpoint, an exported ONNX file, or saved prediction PNGs on a dataset split."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

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
    confirm_overwrite,
    console,
    err_console,
    inference_mode,
    print_json,
    set_threads,
    value,
)


@app.command("eval", rich_help_panel="Train and evaluate")
def eval_cmd(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="A .pt file, or a run folder "
                                                                               "(its checkpoints/best.pt)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Score these prediction PNGs "
                                                                           "(trainIds, or Cityscapes labelIds) "
                                                                           "instead of running a model."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Score an `eseg export`ed ONNX file (float32 or "
                                                             "int8) through onnxruntime with the same evaluator."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="cityscapes, ade20k, synthetic or folder "
                                                                        "(default: the checkpoint's, or the one the "
                                                                        "ONNX file records)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder (default: the checkpoint's, "
                                                                       "or the one the ONNX file records)."),
    split: str = typer.Option("val", "--split", help="Dataset split to score."),
    mode: MODES = MODE_OPTION,
    crop: Optional[str] = CROP_OPTION,
    stride: Optional[str] = STRIDE_OPTION,
    scales: str = SCALES_OPTION,
    flip: bool = FLIP_OPTION,
    ids: str = typer.Option("auto", "--ids", help="--predictions: trainid, labelid or auto."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Images per forward pass (images of "
                                                                        "different sizes need 1)."),
    workers: int = typer.Option(2, "--workers", "-j", min=0, help="Data-loader worker processes (0: load in the "
                                                                  "main process)."),
    device: str = typer.Option("auto", "--device", autocompletion=complete_device,
                               help="auto (cuda if present), cpu, cuda[:N] or xla."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    amp: Optional[AMPS] = typer.Option(None, "--amp", case_sensitive=False, help="bf16 or fp16 autocast (default: "
                                                                                 "none, float32)."),
    max_images: Optional[int] = typer.Option(None, "--max-images", min=1, help="Only the first N images."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for eval_<mode>.json and "
                                                                 "eval_<mode>_confusion.csv (eval.json ... for "
                                                                 "--predictions; default: the run folder; for "
                                                                 "--onnx FILE: FILE's stem + _eval beside it)."),
    save_predictions: Optional[Path] = typer.Option(None, "--save-predictions", help="Write <image>.png (trainIds) "
                                                                                     "and <image>_color.png here."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the raw weights even if the checkpoint has EMA ones."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Overwrite existing results without asking."),
    json_out: bool = typer.Option(False, "--json", help="Print {mIoU, pixAcc, mAcc, fwIoU, per_class} as JSON."),
):
    """mIoU, pixAcc, mAcc, fwIoU and per-class IoU/accuracy from a confusion matrix (percent).

    Examples:

      [cyan]eseg eval --checkpoint runs/lite-s-synthetic-20260101-120000[/]

      [cyan]eseg eval -c best.pt -d cityscapes --data-root data/cityscapes --mode msflip --json[/]

      [cyan]eseg eval -c runs/quickstart --mode slide --save-predictions preds/[/]   crop: the run's own

      [cyan]eseg eval --predictions preds/ -d cityscapes --data-root data/cityscapes[/]

      [cyan]eseg eval --onnx model.onnx[/]   the dataset the file records (or -d / --data-root)
    """
    from eseg_cli.cli._progress import ProgressReporter, use_bar
    from eseg_cli.engine import evaluate, evaluate_onnx, score_predictions
    from eseg_cli.errors import EsegError
    from eseg_cli.run import Run
    modes = inference_mode(mode, crop, stride, scales, flip)
    mode, amp = modes["mode"], value(amp)
    set_threads(threads)

    if sum(v is not None for v in (checkpoint, predictions, onnx)) != 1:
        raise EsegError("give exactly one of --checkpoint PATH, --onnx FILE or --predictions DIR")
    if onnx is not None and (amp or no_ema or device not in ("auto", "cpu")):
        raise EsegError("--amp, --no-ema and --device apply to a checkpoint; an --onnx model runs as exported, on "
                        "the CPU (onnxruntime)")
    if ids not in ("auto", "trainid", "labelid"):
        raise EsegError(f"--ids must be auto, trainid or labelid, got {ids!r}")
    out_dir = out
    reporter = ProgressReporter(bar=use_bar(), quiet=json_out)
    if predictions is not None:
        if dataset is None:
            raise EsegError("--predictions needs --dataset (and --data-root) for the ground truth")
        out_dir = out_dir or predictions
        confirm_overwrite(Run(out_dir).eval_paths()["json"], yes, "the previous evaluation")
        if not json_out:
            err_console.print(f"[dim]scoring {predictions} against {dataset} {split}...[/]")
        with reporter:
            result = score_predictions(predictions, dataset=dataset, data_root=data_root, split=split, ids=ids,
                                       out_dir=out_dir, on_event=reporter)
    else:
        out_dir = out_dir or (onnx.parent / f"{onnx.stem}_eval" if onnx is not None else Run.of(checkpoint).path)
        confirm_overwrite(Run(out_dir).eval_paths(mode)["json"], yes, "the previous evaluation")
        if save_predictions is not None and save_predictions.exists() and any(save_predictions.iterdir()):
            confirm_overwrite(save_predictions, yes, "predictions in it")
        common = dict(dataset=dataset, data_root=data_root, split=split, **modes, batch_size=batch_size,
                      workers=workers, out_dir=out_dir, save_predictions=save_predictions, max_images=max_images,
                      on_event=reporter)
        with reporter:
            if onnx is not None:
                result = evaluate_onnx(onnx, threads=threads, **common)
            else:
                result = evaluate(checkpoint, device=device, amp=amp, use_ema=not no_ema, **common)
    result.pop("confusion_matrix", None)
    if json_out:
        print_json(result)
        return
    _table(result)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _table(r: dict) -> None:
    t = Table(title=f"eseg eval — {r.get('dataset')} {r.get('split')}, {r.get('images')} images"
                    + (f", mode {r['mode']}" if r.get("mode") else ""))
    t.add_column("class")
    t.add_column("IoU %", justify="right")
    t.add_column("Acc %", justify="right")
    for name, v in r["per_class"].items():
        t.add_row(name, _fmt(v["IoU"]), _fmt(v["Acc"]))
    t.add_section()
    t.add_row("[bold]mIoU[/]", f"[bold]{r['mIoU']:.2f}[/]", f"mAcc {r['mAcc']:.2f}")
    t.add_row("pixAcc", f"{r['pixAcc']:.2f}", "")
    t.add_row("fwIoU", f"{r['fwIoU']:.2f}", "")
    console.print(t)
    if r.get("onnx"):
        q = r.get("quantized_ops") or {}
        kind = ("quantised: " + ", ".join(f"{n} {op}" for op, n in q.items())) if q else "no quantised operators"
        console.print(f"[dim]ONNX {r['onnx']} through onnxruntime ({kind})[/]")
        for k, v in (r.get("onnx_metadata") or {}).items():
            console.print(f"[dim]  metadata {k}: {v[:200]}[/]")
    console.print("[dim]'-': class absent from prediction and ground truth, left out of the mean[/]")
    if r.get("invalid_predictions"):
        console.print(f"[yellow]{r['invalid_predictions']} pixels were predicted as no class (an id outside "
                      f"0..{len(r['per_class']) - 1}); they count as wrong[/]")
    files = r.get("files") or {}
    if files:
        console.print(f"[dim]written: {files.get('json')}, {files.get('confusion_csv')}[/]")
