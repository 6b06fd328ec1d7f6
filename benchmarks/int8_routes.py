"""int8 against compiled fp32 and bf16, every route, on a trained run: speed end to end, and accuracy.

    pip install -e '.[deploy]'        # onnx, onnxruntime, torchao
    flock /tmp/eseg-timing.lock python benchmarks/int8_routes.py --run runs/quickstart --threads 2 --rounds 11

Routes (all through eseg's own preparation: batch norm folded, fusion weights frozen):

- ``compiled fp32``: ``Predictor(compile=True)`` (torch.compile with inductor freezing), eseg's fastest exact path;
- ``compiled bf16``: the same under bfloat16 autocast (``Predictor(compile=True, amp="bf16")``);
- ``int8 pt2e``: ``Predictor(quantize="int8")``: torchao's ``prepare_pt2e`` / ``convert_pt2e`` with
  ``X86InductorQuantizer``, compiled with freezing (oneDNN int8 convolutions), checked to be int8;
- ``int8 pt2e + bf16`` (``--mixed``): the same int8 model compiled and run under bfloat16 autocast, so the ops
  left in float (resampling, fusion weights, the additions between quantised convolutions) run in bf16: torchao's
  "int8-mixed-bf16" recipe. Measured only: ``Predictor`` does not offer it (``quantize`` refuses ``amp``);
- ``--heads`` adds two routes that separate int8's two approximations: ``int8 pt2e, exact head`` (the same
  quantisation with the head's levels each resampled to P2, ``quantize_int8(coarse_to_fine_head=False)``) and
  ``compiled bf16, coarse-to-fine head`` (bf16 with int8's coarse-to-fine head sum): the ``Predictor``'s
  ``head="exact"`` and ``head="coarse-to-fine"`` (``eseg predict --head``);
- ``ort fp32``: the ``eseg export``ed ONNX file through onnxruntime's CPU provider;
- ``ort int8 <variant>``: that file quantised by ``onnxruntime.quantization.quantize_static`` (QDQ or QOperator,
  U8S8 or S8S8, per channel, MinMax or Percentile calibration, optionally Resize and the head kept in float).

Speed: an HxWx3 uint8 image (the synthetic val images upscaled to ``--resolution``) to an HxW label map (the
Predictor's ``labels``: normalisation, network, upsample + argmax), batch 1, ``--threads`` threads (torch and
onnxruntime alike), rounds interleaved in a shuffled order; median and minimum per route, and ratios to compiled
fp32 and bf16 from the same run. Accuracy: mIoU on the synthetic val set at its native size, and the share of
pixels whose class equals the fp32 model's (there and at ``--resolution``). Calibration: ``--calibrate`` training
images of the run's dataset, through its own preprocessing (every route the same images; an onnxruntime file is
calibrated once, at their size, and runs at any size; int8 pt2e calibrates each size's graph on them resized).

Writes ``reports/benchmarks/int8_routes.json`` and ``int8_routes.md`` (``--name`` changes the stem).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

# oneDNN's kernel cache holds 1024 primitives by default: this run's routes and sizes need more (see peers.py)
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peers import cpu_description  # noqa: E402  (benchmarks/peers.py)

from eseg_cli.engine.evaluator import eval_dataset  # noqa: E402
from eseg_cli.engine.metrics import ConfusionMatrix  # noqa: E402
from eseg_cli.inference import Predictor, allocator  # noqa: E402
from eseg_cli.inference.export import OnnxPredictor, export_model  # noqa: E402
from eseg_cli.inference.int8 import run_calibration_images  # noqa: E402
from eseg_cli.utils import atomic_write_json, atomic_write_text, parse_size  # noqa: E402

#: onnxruntime static quantisation variants: name -> quantize_static settings (the naive one of the issue first)
ORT_VARIANTS = {
    "QDQ S8S8 per-channel MinMax": dict(fmt="QDQ", act="QInt8", per_channel=True, method="MinMax", keep=False),
    "QOperator U8S8 per-channel MinMax": dict(fmt="QOperator", act="QUInt8", per_channel=True, method="MinMax",
                                              keep=False),
    "QDQ U8S8 per-channel MinMax; Resize+head float": dict(fmt="QDQ", act="QUInt8", per_channel=True,
                                                           method="MinMax", keep=True),
    "QDQ U8S8 per-channel Percentile; Resize+head float": dict(fmt="QDQ", act="QUInt8", per_channel=True,
                                                               method="Percentile", keep=True),
}


def ort_quantize(fp32_path: Path, out: Path, calibration: list[np.ndarray], variant: dict) -> dict:
    """Quantise the ONNX file with onnxruntime's ``quantize_static``; returns the quantised op counts."""
    import onnx
    from onnxruntime import quantization as oq

    class Reader(oq.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": x} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    proto = onnx.load(str(fp32_path))
    exclude = []
    op_types = None
    if variant["keep"]:  # Resize in float, and the head (its last separable conv and the classifier)
        exclude = [n.name for n in proto.graph.node if n.op_type == "Resize" or n.name.startswith("/head/")]
        op_types = sorted({n.op_type for n in proto.graph.node if n.op_type in ("Conv", "Add", "Mul", "MaxPool",
                                                                                "AveragePool", "Concat")})
    kw = {"op_types_to_quantize": op_types} if op_types else {}
    oq.quantize_static(str(fp32_path), str(out), Reader(), quant_format=getattr(oq.QuantFormat, variant["fmt"]),
                       activation_type=getattr(oq.QuantType, variant["act"]), weight_type=oq.QuantType.QInt8,
                       per_channel=variant["per_channel"],
                       calibrate_method=getattr(oq.CalibrationMethod, variant["method"]),
                       nodes_to_exclude=exclude, **kw)
    q = onnx.load(str(out))
    # the quantised model's metadata is the fp32 file's (OnnxPredictor reads it)
    del q.metadata_props[:]
    q.metadata_props.extend(proto.metadata_props)
    onnx.save(q, str(out))
    ops = [n.op_type for n in q.graph.node]
    counts = {k: ops.count(k) for k in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "Conv") if k in ops}
    if not (counts.get("QuantizeLinear") or counts.get("QLinearConv")):
        raise SystemExit(f"onnxruntime quantised nothing in {out} ({counts}); its time would be fp32's")
    counts["excluded_nodes"] = len(exclude)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "quickstart"), help="a trained run folder or checkpoint")
    ap.add_argument("--resolution", default="1024x2048", help="HxW of the timed images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calibrate", type=int, default=16, help="training images to calibrate on")
    ap.add_argument("--val-images", type=int, default=0, help="val images for accuracy (0: all)")
    ap.add_argument("--ort", default=",".join(ORT_VARIANTS), help="onnxruntime int8 variants (comma-separated)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--name", default="int8_routes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mixed", action="store_true", help="also time int8 pt2e under bf16 autocast (int8-mixed-bf16)")
    ap.add_argument("--heads", action="store_true",
                    help="also time int8 with the exact head sum and bf16 with int8's coarse-to-fine head sum")
    ap.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                    help="glibc malloc for every cell: as eseg sets it on CPU (tuned) or glibc's defaults")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # before any model (a Predictor tunes malloc for the whole process); records what holds (not glibc: default)
    args.malloc = "tuned" if allocator.choose(args.malloc) else "default"
    res = parse_size(args.resolution)
    t_start = time.perf_counter()
    ort_names = [v for v in args.ort.split(",") if v]
    for v in ort_names:
        if v not in ORT_VARIANTS:
            raise SystemExit(f"unknown onnxruntime variant {v!r}; choose from {list(ORT_VARIANTS)}")

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    fp32 = Predictor(args.run, device="cpu")  # the exact reference (eager, folded)
    ckpt = fp32.checkpoint
    calib = run_calibration_images(ckpt, args.calibrate)
    calib_np = [fp32.to_tensor(x).contiguous().numpy() for x in calib]
    cfg = ckpt["config"] or {}
    val = eval_dataset(cfg.get("dataset") or "synthetic", cfg.get("data_root") or ckpt.get("data_root"), "val")
    n_val = len(val) if args.val_images <= 0 else min(args.val_images, len(val))
    val_items = [val[i] for i in range(n_val)]

    routes: dict[str, dict] = {}
    routes["compiled fp32"] = {"predictor": Predictor(args.run, device="cpu", compile=True)}
    routes["compiled bf16"] = {"predictor": Predictor(args.run, device="cpu", compile=True, amp="bf16")}
    t0 = time.perf_counter()
    # int8_min_agreement=0: this benchmark measures int8's agreement itself (eseg would refuse a size below 90%)
    routes["int8 pt2e"] = {"predictor": Predictor(args.run, device="cpu", quantize="int8", calibrate=calib,
                                                  int8_min_agreement=0)}
    log(f"int8 pt2e calibrated on {len(calib)} images in {time.perf_counter() - t0:.0f}s")
    if args.mixed:  # the Predictor refuses quantize with amp; the benchmark sets its autocast after building it
        mixed = Predictor(args.run, device="cpu", quantize="int8", calibrate=calib, int8_min_agreement=0)
        mixed.amp = "bf16"
        routes["int8 pt2e + bf16"] = {"predictor": mixed}
    if args.heads:  # int8 without, bf16 with the coarse-to-fine head (Predictor's head=)
        routes["int8 pt2e, exact head"] = {"predictor": Predictor(args.run, device="cpu", quantize="int8",
                                                                  calibrate=calib, head="exact",
                                                                  int8_min_agreement=0)}
        routes["compiled bf16, coarse-to-fine head"] = {"predictor": Predictor(
            args.run, device="cpu", compile=True, amp="bf16", head="coarse-to-fine")}
    tmp = Path(tempfile.mkdtemp(prefix="eseg-int8-"))
    onnx_fp32 = tmp / "fp32.onnx"
    export_model(args.run, "onnx", onnx_fp32, sizes=((256, 512),))
    routes["ort fp32"] = {"predictor": OnnxPredictor(onnx_fp32, threads=args.threads)}
    for name in ort_names:
        t0 = time.perf_counter()
        path = tmp / f"int8-{len(routes)}.onnx"
        counts = ort_quantize(onnx_fp32, path, calib_np, ORT_VARIANTS[name])
        routes[f"ort int8 {name}"] = {"predictor": OnnxPredictor(path, threads=args.threads), "ops": counts}
        log(f"ort int8 {name}: quantised in {time.perf_counter() - t0:.0f}s, {counts}")

    # accuracy on the val set at its native size: mIoU, and agreement with the exact fp32 labels
    with torch.inference_mode():
        ref_labels = [fp32.labels(fp32.to_tensor(img[None])) for img, _ in val_items]
        ref_cm = ConfusionMatrix(fp32.num_classes, class_names=fp32.class_names)
        for (_, mask), lab in zip(val_items, ref_labels):
            ref_cm.update(lab.long(), mask[None])
        rows = [{"route": "eager fp32 (reference)", "val_mIoU": ref_cm.compute()["mIoU"], "val_agreement": 1.0}]
        for name, r in routes.items():
            t0 = time.perf_counter()
            p = r["predictor"]
            cm = ConfusionMatrix(fp32.num_classes, class_names=fp32.class_names)
            same = total = 0
            for (img, mask), lab in zip(val_items, ref_labels):
                pred = p.labels(p.to_tensor(img[None]))
                cm.update(pred.long(), mask[None])
                same += int((pred == lab).sum())
                total += lab.numel()
            r["val_mIoU"], r["val_agreement"] = cm.compute()["mIoU"], same / total
            log(f"{name}: val mIoU {r['val_mIoU']:.2f}, agreement {r['val_agreement']:.4%} "
                f"({time.perf_counter() - t0:.0f}s)")

        # speed at --resolution: upscaled val images, end to end
        # uint8 (1, 3, H, W) tensors, as the val images above (another layout would compile again)
        images = [F.interpolate(img[None].float(), size=res, mode="bilinear", align_corners=False).round()
                  .clamp(0, 255).to(torch.uint8) for img, _ in val_items[:2]]
        ref_big = [fp32.labels(fp32.to_tensor(im)) for im in images]
        for name, r in routes.items():
            p = r["predictor"]
            t0 = time.perf_counter()
            outs = [p.labels(p.to_tensor(im)) for im in images]  # compiles here, for the compiled routes
            outs = [p.labels(p.to_tensor(im)) for im in images]
            r["agreement_at_resolution"] = float(np.mean([(a == b).float().mean().item()
                                                          for a, b in zip(outs, ref_big)]))
            r["times_ms"] = []
            log(f"{name}: ready at {args.resolution} in {time.perf_counter() - t0:.0f}s")
        order = list(routes)
        rng = random.Random(args.seed)
        for k in range(-1, args.rounds):  # round -1: an untimed warm-up in the shuffled order
            if k == 0:
                graphs = counters["stats"]["unique_graphs"]
            rng.shuffle(order)
            for name in order:
                p = routes[name]["predictor"]
                im = images[k % len(images)]
                t0 = time.perf_counter()
                p.labels(p.to_tensor(im))
                if k >= 0:
                    routes[name]["times_ms"].append(1000 * (time.perf_counter() - t0))
            log(f"round {k + 1}/{args.rounds}" if k >= 0 else f"warm-up round ({counters['stats']['unique_graphs']} "
                "graphs compiled so far)")
        if counters["stats"]["unique_graphs"] != graphs:
            raise SystemExit("a compiled route compiled again while it was timed: its times include compiling")
    for name, r in routes.items():
        rows.append({"route": name, "median_ms": statistics.median(r["times_ms"]), "min_ms": min(r["times_ms"]),
                     "val_mIoU": r["val_mIoU"], "val_agreement": r["val_agreement"],
                     "agreement_at_resolution": r["agreement_at_resolution"], "times_ms": r["times_ms"],
                     **({"onnx_ops": r["ops"]} if "ops" in r else {})})
    by = {r["route"]: r for r in rows}
    for r in rows:
        if "median_ms" in r:
            r["images_per_s"] = 1000 / r["median_ms"]
            r["speedup_vs_compiled_fp32"] = by["compiled fp32"]["median_ms"] / r["median_ms"]
            r["speedup_vs_compiled_bf16"] = by["compiled bf16"]["median_ms"] / r["median_ms"]
    i8, ref_miou = by["int8 pt2e"], by["eager fp32 (reference)"]["val_mIoU"]
    targets = {"int8 >= 1.5x compiled fp32 images/s": i8["speedup_vs_compiled_fp32"] >= 1.5,
               "int8 >= 1.2x compiled bf16 images/s": i8["speedup_vs_compiled_bf16"] >= 1.2,
               "int8 val mIoU within 0.5 of fp32": abs(i8["val_mIoU"] - ref_miou) <= 0.5,
               "int8 agreement with fp32 >= 98% (val)": i8["val_agreement"] >= 0.98}
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
            "malloc": args.malloc, "run": args.run, "model": (ckpt.get("model_config") or {}).get("name"),
            "resolution": args.resolution, "threads": args.threads, "rounds": args.rounds, "calibrate": args.calibrate,
            "val_images": n_val, "cpu": cpu_description(),
            "torch": torch.__version__, "torchao": _version("torchao"), "onnxruntime": _version("onnxruntime"),
            "int8_pt2e": {"calibration": routes["int8 pt2e"]["predictor"].model.int8.calibration,
                          "checks": routes["int8 pt2e"]["predictor"].model.int8.report},
            "seconds": round(time.perf_counter() - t_start)}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", {"meta": meta, "rows": rows, "targets": targets})
    atomic_write_text(out / f"{args.name}.md", markdown(meta, rows, targets))
    print(markdown(meta, rows, targets))


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def markdown(meta: dict, rows: list[dict], targets: dict) -> str:
    cpu = meta["cpu"]
    table = pd.DataFrame([{
        "route": r["route"],
        "median ms": f"{r['median_ms']:.1f}" if "median_ms" in r else "-",
        "min ms": f"{r['min_ms']:.1f}" if "min_ms" in r else "-",
        "images/s": f"{r['images_per_s']:.2f}" if "images_per_s" in r else "-",
        "vs compiled fp32": f"{r['speedup_vs_compiled_fp32']:.2f}x" if "median_ms" in r else "-",
        "vs compiled bf16": f"{r['speedup_vs_compiled_bf16']:.2f}x" if "median_ms" in r else "-",
        "val mIoU": f"{r['val_mIoU']:.2f}",
        "agreement (val)": f"{100 * r['val_agreement']:.2f}%",
        f"agreement ({meta['resolution']})": (f"{100 * r['agreement_at_resolution']:.2f}%"
                                              if "agreement_at_resolution" in r else "-"),
    } for r in rows]).to_markdown(index=False)
    lines = [f"# int8 routes: {meta['model']} ({meta['run']})", "",
             f"{meta['date']}; CPU: {cpu['name']} ({cpu['cores']} cores; {', '.join(cpu['flags'])}); "
             f"{meta['threads']} threads; torch {meta['torch']}, torchao {meta['torchao']}, onnxruntime "
             f"{meta['onnxruntime']}.", "",
             f"Speed: end to end (uint8 image -> labels) at {meta['resolution']}, batch 1, {meta['rounds']} "
             f"interleaved rounds. Accuracy: the {meta['val_images']} synthetic val images at their native size; "
             f"agreement = share of pixels whose class equals eager fp32's (at {meta['resolution']}: on 2 upscaled val "
             f"images). Calibration: {meta['calibrate']} train images at their size (the onnxruntime files, whatever "
             f"the input size; int8 pt2e calibrates each size's graph on them resized to it).", "",
             table, "", f"Targets (issue 21, stated for ESeg-Lite-S; here {meta['model']}): "
             + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()), "",
             f"int8 pt2e checks: {meta['int8_pt2e']['checks']}", "", f"Command: `{meta['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
