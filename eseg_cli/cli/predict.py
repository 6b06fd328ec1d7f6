"""``eseg predict`` and ``eseg export``: use a trained model on images and videos, or ship it."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from eseg_cli.cli._app import app
from eseg_cli.cli._common import (
    AMPS,
    CROP_OPTION,
    FLIP_OPTION,
    HEADS,
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
    set_threads,
    value,
)


class Ids(str, Enum):
    trainid = "trainid"
    labelid = "labelid"


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    pt2 = "pt2"


@app.command("predict", rich_help_panel="Use a trained model")
def predict_cmd(
    inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="Images, folders (recursive), glob patterns "
                                                                     "or videos."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="A run folder or a .pt file."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Run an `eseg export`ed ONNX file through onnxruntime "
                                                             "instead of a checkpoint."),
    ids: Ids = typer.Option(Ids.trainid, "--ids", help="Label PNG values: trainid, or Cityscapes labelid (for the "
                                                       "test server)."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Write <name>_overlay.jpg."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Mask opacity in the overlay."),
    confidence: bool = typer.Option(False, "--confidence", help="Also write <name>_confidence.png (max class "
                                                                "probability x 255)."),
    mode: MODES = MODE_OPTION,
    crop: Optional[str] = CROP_OPTION,
    stride: Optional[str] = STRIDE_OPTION,
    scales: str = SCALES_OPTION,
    flip: bool = FLIP_OPTION,
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=1, help="Images per forward pass (equal sizes)."),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader processes reading images."),
    device: str = typer.Option("auto", "--device", autocompletion=complete_device,
                               help="auto (cuda if present), cpu or cuda[:N]."),
    amp: Optional[AMPS] = typer.Option(None, "--amp", case_sensitive=False,
                                       help="Autocast: bf16 or fp16 (not exact). --compile --amp bf16 is the "
                                            "fastest path on CPUs with AVX512-BF16 or AMX and on GPUs."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the prepared model (inductor freezing, "
                                  "exact), at the first image (a minute or more on a few cores): inputs of one "
                                  "size get a static graph, mixed sizes one graph per range of heights and widths "
                                  "(e.g. 257 to 512)."),
    int8: bool = typer.Option(False, "--int8", help="Quantise to int8 on the CPU (PyTorch 2 export quantisation, "
                              "oneDNN int8 convolutions; ESeg's head summed coarse to fine; not exact), calibrated "
                              "on --calibrate training images of the run's dataset; each new image size calibrates "
                              "and compiles once (tens of seconds). The quick-start ESeg-Lite-S at 1024x2048 on 2 "
                              "cores with AVX512-VNNI and AVX512-BF16, no AMX: 2.1x --compile, 1.33x --compile --amp "
                              "bf16, val mIoU +0.05, 98.4% of pixels as float32; on a CPU with AMX no faster than "
                              "--compile --amp bf16 (0.98x), which is the better choice there; a start-up line says "
                              "which this CPU is (reports/benchmarks/README.md)."),
    head: Optional[HEADS] = typer.Option(None, "--head", case_sensitive=False,
                                         help="How an ESeg head sums its levels: exact (each level upsampled to "
                                              "P2's size, as trained) or coarse-to-fine (each upsampled once onto "
                                              "the next finer level: faster, not exact). Default: coarse-to-fine "
                                              "with --int8, exact otherwise. With --compile --amp bf16 on a 2-core "
                                              "Xeon with AMX at 1024x2048, coarse-to-fine ran ESeg-Lite-S and ESeg-S "
                                              "1.10x faster, 98.6% of pixels as float32 (exact: 99.8% and 99.4%)."),
    calibrate: Optional[int] = typer.Option(None, "--calibrate", metavar="N",
                                            help="With --int8: training images to calibrate on (default 16)."),
    int8_min_agreement: Optional[float] = typer.Option(
        None, "--int8-min-agreement", min=0.0, max=1.0, metavar="SHARE",
        help="With --int8: the least share of pixels whose class int8 must give as float32 does on the first image "
             "of each size (one float32 pass per size), or that size is refused (default 0.9; on a val image "
             "upscaled to 1024x2048, ESeg-S trained on 256x256 crops agreed on 47-65%, ESeg-Lite-S on 95%)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the raw weights even if the checkpoint has EMA ones."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Overwrite existing outputs."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Segment images (any size) and videos: label PNG, colour mask and overlay per image.

    Examples:

      [cyan]eseg predict -c runs/lite-s-cityscapes-20260101-120000 street.png --out preds/[/]

      [cyan]eseg predict -c best.pt 'frames/**/*.jpg' --out preds/ --ids labelid --no-overlay[/]

      [cyan]eseg predict --onnx model.onnx drive.mp4 --out preds/[/]

      [cyan]eseg predict -c runs/<run> frames/ --out preds/ --compile --amp bf16[/]   faster, not exact

      [cyan]eseg predict -c runs/<run> frames/ --out preds/ --int8 --calibrate 16[/]   int8 on the CPU, not exact

      [cyan]eseg predict -c runs/<run> street.png --out preds/ --mode msflip[/]   multi-scale + flip, as eseg eval
    """
    from eseg_cli.errors import EsegError
    from eseg_cli.inference.files import collect_inputs, mixed_sizes, plan_outputs
    from eseg_cli.utils import check_output_apart, output_lock

    if (checkpoint is None) == (onnx is None):
        raise EsegError("give exactly one of --checkpoint RUN|FILE or --onnx FILE")
    if out.exists() and not out.is_dir():
        raise EsegError(f"--out {out} is a file; give a folder")
    if onnx is not None and (amp or compile_ or no_ema or int8 or head):
        raise EsegError("--amp, --compile, --int8, --head and --no-ema apply to a checkpoint; an --onnx model runs as "
                        "exported")
    if (calibrate is not None or int8_min_agreement is not None) and not int8:
        raise EsegError("--calibrate and --int8-min-agreement set --int8; add --int8, or drop them")
    modes = inference_mode(mode, crop, stride, scales, flip)
    images, videos = collect_inputs(inputs)
    check_output_apart(out, [Path(i) for i in inputs if Path(i).is_dir()], [p for p, _ in images] + videos)
    set_threads(threads)
    with output_lock(out, f"output folder {out} is in use by another eseg predict; wait for it to finish, or "
                          "choose another --out"):
        plan_outputs(images, videos, out, overlay=overlay, confidence=confidence, overwrite=yes)
        if onnx is not None:
            from eseg_cli.inference.export import OnnxPredictor

            predictor = OnnxPredictor(onnx, threads=threads, **modes)
        else:
            from eseg_cli.inference import Predictor
            from eseg_cli.inference.precision import cpu_bf16_support, precision_note
            from eseg_cli.inference.predictor import DEFAULT_CALIBRATION

            dynamic = compile_ and mixed_sizes([p for p, _ in images], videos)  # else faster static graphs
            quantize = {"quantize": "int8", "calibrate": DEFAULT_CALIBRATION if calibrate is None else calibrate} \
                if int8 else {}
            predictor = Predictor(checkpoint, device=device, compile=compile_, compile_dynamic=dynamic,
                                  amp=value(amp), use_ema=not no_ema, head=value(head),
                                  int8_min_agreement=int8_min_agreement, **modes, **quantize)
            note = precision_note(predictor.amp, predictor.device, "predict", predictor.quantize)  # the CPU's support
        summary = _predict_all(predictor, images, videos, out, json_out, ids=ids.value, overlay=overlay,
                               alpha=alpha, confidence=confidence, batch_size=batch_size, workers=workers,
                               overwrite=yes)
        summary["inference"] = dict(predictor.mode_kw)  # the mode, with slide's crop as resolved
        if onnx is None:
            summary["head"] = predictor.head
        if int8:  # how it was calibrated, and what the int8 checks found at each input shape
            summary["int8"] = {"calibration": predictor.model.int8.calibration, "checks": predictor.model.int8.report}
    if onnx is None and compile_:
        summary["compile"] = "dynamic" if predictor.model.prepared["compile_dynamic"] else "static"
    if json_out:
        if onnx is None and note:
            summary.update(precision_note=note, cpu_bf16=cpu_bf16_support())
        print_json(summary)
        return
    t = Table(title=f"eseg predict — {summary['model']}")
    t.add_column("")
    t.add_column("", justify="right")
    if images:
        t.add_row("images", str(summary["images"]))
        t.add_row("time (s)", f"{summary['seconds']:.2f}")
        t.add_row("images/s", f"{summary['images_per_s']:.2f}" + (" (compiling included)" if compile_ or int8 else ""))
    for v in summary.get("videos", []):
        t.add_row(f"video {Path(v['video']).name}", f"{v['frames']} frames, {v['frames_per_s']:.2f} frames/s")
    console.print(t)
    if images and summary["class_histogram"]:
        h = Table(title="predicted classes (share of pixels)")
        h.add_column("class")
        h.add_column("%", justify="right")
        for name, share in sorted(summary["class_histogram"].items(), key=lambda kv: -kv[1]):
            h.add_row(name, f"{100 * share:.2f}")
        console.print(h)
    kinds = ", ".join(summary.get("files_per_image", [])) or "overlay videos"
    console.print(f"[dim]written to {out}: per image {kinds}[/]")
    if onnx is None and note:
        console.print(note if note.startswith("Warning") else f"[dim]{note}[/]")


def _predict_all(predictor, images, videos, out: Path, quiet: bool, *, alpha: float, overwrite: bool,
                 **image_kw) -> dict:
    """Images, then videos, with progress drawn from the library's events. Ctrl-C stops with what was finished
    and how to go on (no partial file is left: each is written whole, or removed)."""
    from eseg_cli.cli._progress import ProgressReporter, use_bar
    from eseg_cli.errors import Interrupted
    from eseg_cli.inference.files import predict_images, predict_video

    summary: dict = {"model": predictor.source}
    done = {"images": 0, "videos": 0}
    reporter = ProgressReporter(bar=use_bar(), quiet=quiet or not use_bar())  # a bar on a terminal, else nothing

    def on_event(ev):
        if ev.task == "predict" and ev.kind == "advance":
            done["images"] = ev.step
        reporter(ev)

    try:
        with reporter:
            if images:
                summary.update(predict_images(predictor, images, out, alpha=alpha, overwrite=overwrite,
                                              on_event=on_event, **image_kw))
            if videos:
                summary["videos"] = []
                for v in videos:
                    summary["videos"].append(predict_video(predictor, v, out, alpha=alpha, overwrite=overwrite,
                                                           on_event=on_event))
                    done["videos"] += 1
    except KeyboardInterrupt:
        raise Interrupted(f"stopped: {done['images']} of {len(images)} images and {done['videos']} of {len(videos)} "
                          f"videos were written whole to {out}", signum=2,
                          resume="run the same command again with --yes (it redoes them all)") from None
    return summary


@app.command("export", rich_help_panel="Use a trained model")
def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A run folder or a .pt file."),
    format_: ExportFormat = typer.Option(ExportFormat.onnx, "--format", "-f", help="onnx, torchscript or pt2."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (model.onnx, model.ts, model.pt2)."),
    sizes: str = typer.Option("512x1024,360x500", "--check-sizes",
                              help="HxW sizes the export is checked at against PyTorch (at least 32x32)."),
    opset: int = typer.Option(17, "--opset", min=13, help="ONNX opset."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the raw weights even if the checkpoint has EMA ones."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Overwrite an existing file."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Export the prepared (folded) model; then check it against PyTorch at two sizes.

    Input: float32 NCHW normalised as in training (mean/std, class names and palette are in the file's
    metadata); dynamic batch, height and width (pt2: 32 to 8192 per side); output: logits at the input size.
    Fails if the argmax agrees with PyTorch on less than 99.9% of pixels.

    Examples:

      [cyan]eseg export -c runs/lite-s-cityscapes-20260101-120000 --format onnx --out model.onnx[/]

      [cyan]eseg export -c best.pt -f torchscript -o model.ts[/]
    """
    from eseg_cli.cli._common import confirm_overwrite
    from eseg_cli.errors import EsegError
    from eseg_cli.inference.export import export_model
    from eseg_cli.utils import parse_size

    parsed = tuple(parse_size(s, "--check-sizes") for s in sizes.split(",") if s.strip())
    if not parsed:
        raise EsegError("--check-sizes needs at least one HxW size")
    if out.is_dir():
        raise EsegError(f"--out {out} is a folder; give a file name")
    confirm_overwrite(out, yes, "the exported model")
    set_threads(threads)
    if not json_out:
        err_console.print(f"[dim]exporting {checkpoint} to {format_.value}...[/]")
    res = export_model(checkpoint, format_.value, out, sizes=parsed, opset=opset, use_ema=not no_ema)
    if json_out:
        print_json(res)
        return
    t = Table(title=f"eseg export — {res['path']} ({res['format']}, dynamic {res['dynamic']})")
    for c in ("size", "batch", "max |Δ logit|", "argmax agreement"):
        t.add_column(c, justify="right")
    for c in res["checks"]:
        t.add_row(c["size"], str(c["batch"]), f"{c['max_abs_diff']:.2e}", f"{100 * c['argmax_agreement']:.3f}%")
    console.print(t)
