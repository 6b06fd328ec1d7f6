"""ESeg against its peers, in wall-clock time, every inference mode, side by side in one process.

    pip install -e '.[bench,deploy]'            # segmentation-models-pytorch, onnx, onnxruntime
    python benchmarks/peers.py --threads 2 --rounds 7 --resolutions 512x1024,1024x2048

Pairs (19 classes, batch 1, fp32; random weights on the demo frame, or ``--weights trained``: each model's run
on a synthetic val image, see ``TRAINED_RUNS``. The networks' speed does not depend on the weights; the exact
post-processing's does: a trained model's map has many more class boundaries, 25% of ESeg-Lite-S's cells against
0.2% with random weights):
  ESeg-S       vs smp DeepLabV3+ (tu-efficientnet_b1, output stride 16)
  ESeg-Lite-S  vs torchvision LRASPP-MobileNetV3-Large

Modes: ``eager`` (NCHW, as built), ``channels_last``, ``folded`` (``eseg_cli.inference.prepare_model`` for every
model: batch norm folded, channels_last, 1x1 convs through oneDNN, and for ESeg the frozen fusion weights:
eseg's default inference path), ``compiled`` (folded + ``torch.compile`` with inductor's freezing, as
``eseg predict --compile`` does),
``onnxruntime`` (the folded model exported to ONNX, CPU provider), and ``bf16`` (compiled, run under bfloat16
autocast as ``eseg predict --compile --amp bf16`` does: *not exact*, so it is kept out of the exact comparisons
and its argmax agreement with the model's own fp32 mask is reported), and ``int8`` (``eseg predict --int8``'s path,
``eseg_cli.inference.int8.quantize_int8``, for every model alike: PyTorch 2 export quantisation calibrated on the
demo frame and three variants of it at the timed size, compiled with freezing; not exact, agreement reported).
The admissible set (``--admissible``) adds to the exact modes those whose mIoU change on the quick-start model was
measured within 0.5 of fp32; random weights say nothing of a peer's own int8 and bf16 accuracy (only their agreement
with their fp32 masks is reported here), so ``--accuracy reports/benchmarks/peers_accuracy.json`` gives each peer
the admissible modes measured on it, trained (``benchmarks/peers_accuracy.py``), and an ``int8_routes.py`` JSON
beside it (comma-separated) gives an ESeg model those measured on its trained run. Each mode is timed two ways:

- ``model``: a normalised float batch -> the network's logits at its own output stride (before the final
  bilinear upsampling, which is part of post-processing for every model);
- ``e2e``: an HxWx3 uint8 image -> an HxW uint8 label map: normalisation, the network, and the same exact
  post-processing for all models (``eseg_cli.inference.upsample_argmax``: bilinear upsampling of the
  logits to the image size and argmax over classes, computed only where the 4 source pixels disagree; in the
  compiled, bf16 and int8 modes with its argmaxes compiled, as the ``Predictor`` runs those modes).

Rounds are interleaved (every model/mode/resolution once per round, in a shuffled order) so that load
from other processes hits all of them alike; medians are reported, with ratios to the ESeg model of the
pair in the same mode, best exact mode vs best exact mode, and best mode (bf16 included) vs best mode.
Writes ``reports/benchmarks/peers.json`` (schema: see ``write_report``) and ``peers.md`` (``--name`` changes the
stem).
"""

from __future__ import annotations

import argparse
import copy
import functools
import io
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# oneDNN keeps 1024 compiled kernels (primitives) by default; this run's 4 models x 2 sizes x 4 oneDNN modes
# need more, and past that every cell recreated its kernels each round (measured: ESeg-Lite-S compiled
# 512x1024 end to end 75.8 ms median with the default, 45.8 ms with room for all)
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eseg_cli.inference import allocator, prepare_model, upsample_argmax  # noqa: E402
from eseg_cli.inference.precision import autocast, cpu_bf16_support  # noqa: E402
from eseg_cli.inference.predictor import normalization_constants, normalize_uint8  # noqa: E402
from eseg_cli.models import build_model  # noqa: E402
from eseg_cli.utils import atomic_write_json, atomic_write_text, parse_size  # noqa: E402

MODES = ("eager", "channels_last", "folded", "compiled", "onnxruntime", "bf16", "int8")
EXACT_MODES = MODES[:5]  # fp32, equal to the training model up to float rounding; bf16 and int8 are not exact
COMPILED_MODES = ("compiled", "bf16", "int8")  # their post-processing compiles its argmaxes (as the Predictor's)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class LowRes(nn.Module):
    """A peer as ``x -> logits at its own output stride`` (its final bilinear upsampling removed)."""

    def __init__(self, kind: str, model: nn.Module):
        super().__init__()
        self.kind, self.model = kind, model

    def forward(self, x):
        if self.kind == "eseg":
            return self.model.forward_logits(x)
        if self.kind == "lraspp":
            return self.model.classifier(self.model.backbone(x))
        return self.model(x)  # smp with its segmentation head's Upsample replaced by Identity


def build_pairs(weights: str = "random", runs: Path = ROOT / "runs") -> list[tuple[str, str, LowRes]]:
    """(pair, name, model) rows; the ESeg model first in each pair; random weights, or ``"trained"``: each model's
    run under ``runs`` (:func:`trained`)."""
    rows = []
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        smp = None
        print("segmentation-models-pytorch is not installed (pip install -e '.[bench]'): DeepLabV3+ skipped",
              file=sys.stderr)
    rows.append(("S", "ESeg-S", LowRes("eseg", build_model("eseg-s", num_classes=19))))
    if smp is not None:
        dl = smp.DeepLabV3Plus(encoder_name="tu-efficientnet_b1", encoder_weights=None, encoder_output_stride=16,
                               classes=19)
        dl.segmentation_head[1] = nn.Identity()  # its x4 bilinear upsampling moves into post-processing
        rows.append(("S", "DeepLabV3+ (EfficientNet-B1, OS16, smp)", LowRes("smp", dl)))
    import torchvision

    rows.append(("Lite-S", "ESeg-Lite-S", LowRes("eseg", build_model("eseg-lite-s", num_classes=19))))
    lr = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                   num_classes=19)
    rows.append(("Lite-S", "LRASPP-MobileNetV3-L (torchvision)", LowRes("lraspp", lr)))
    if weights == "trained":
        rows = [(pair, name, trained(name, m, runs)) for pair, name, m in rows]
    for _, _, m in rows:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return rows


#: ``--weights trained``: each model's run under ``--runs`` (the quick start, the synthetic-recipe ESeg-S, and the
#: peers trained by ``benchmarks/peers_accuracy.py``: all 19 classes, the same synthetic data)
TRAINED_RUNS = {"ESeg-Lite-S": "quickstart", "ESeg-S": "eseg-s-synthetic",
                "LRASPP-MobileNetV3-L (torchvision)": "peers/lraspp",
                "DeepLabV3+ (EfficientNet-B1, OS16, smp)": "peers/deeplabv3plus"}


def trained(name: str, model: LowRes, runs: Path) -> LowRes:
    """``model`` with the trained weights of its run (the best checkpoint's EMA weights where it has them, as the
    Predictor loads them; an ESeg model rebuilt from the run's own configuration); refuses, in one line, a missing
    run (with the command that makes it), an unreadable one, or an ESeg run of another scale."""
    from eseg_cli.errors import EsegError
    from eseg_cli.inference.runtime import load_checkpoint, load_model, load_weights

    path = runs / TRAINED_RUNS[name] / "checkpoints" / "best.pt"
    if not path.is_file():
        make = ("python benchmarks/peers_accuracy.py" if "/" in TRAINED_RUNS[name] else
                "eseg train (the quick start, or --scale s with recipes/synthetic.yaml)")
        raise SystemExit(f"--weights trained: {path} is missing; train it first ({make}), or point --runs at it")
    try:
        if model.kind == "eseg":
            net, state = load_model(path)
            if state["model_config"]["name"] != name.lower():
                raise EsegError(f"checkpoint {path} holds {state['model_config']['name']}, not {name.lower()}")
            return LowRes("eseg", net)
        state = load_checkpoint(path)
        weights = state["ema"] if state.get("ema") is not None else state["model"]
        # eseg's trainer held the peer as ``.model`` of its wrapper (benchmarks/train_speed.py)
        load_weights(model.model, {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")},
                     str(path))
    except EsegError as e:
        raise SystemExit(f"--weights trained: {e}") from None
    return model


def cpu_description() -> dict:
    """The CPU's name and the instruction sets int8 and bf16 use."""
    name, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", "x86_64"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
    return {"name": name, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags],
            "torch_capability": cpu_bf16_support()["capability"]}


def make_variant(model: LowRes, mode: str, res: tuple[int, int], threads: int, bf16_head: str = "exact"):
    """A callable ``f(x) -> low-res logits`` and whether it wants channels_last input. ``bf16_head``: how an ESeg
    model's head sums its levels in the bf16 mode (``eseg predict --compile --amp bf16 --head ...``)."""
    if mode == "eager":
        return model, False
    if mode == "channels_last":
        return copy.deepcopy(model).to(memory_format=torch.channels_last), True
    # eseg's preparation for every model: BN folded, channels_last, 1x1 convs through oneDNN (and, for ESeg,
    # the frozen fusion weights)
    if mode == "compiled":  # + torch.compile with inductor's freezing (oneDNN convs with fused activations)
        return prepare_model(model, channels_last=True, compile=True), True
    if mode == "bf16":  # the compiled model under bfloat16 autocast (the casts are frozen into the graph)
        if bf16_head == "coarse-to-fine" and model.kind == "eseg":
            from eseg_cli.inference.int8 import coarse_to_fine_heads

            model = copy.deepcopy(model)
            coarse_to_fine_heads(model)
        compiled = prepare_model(model, channels_last=True, compile=True)

        def run_bf16(x):
            with autocast("cpu", "bf16"):
                return compiled(x)

        return run_bf16, True
    if mode == "int8":  # eseg's int8 path for every model (pt2e, calibrated on the frame at this size, compiled), fed
        # channels_last as the Predictor feeds it
        from eseg_cli.inference.int8 import quantize_int8

        return quantize_int8(prepare_model(model, channels_last=False), calibration_batches(res),
                             min_agreement=0), True  # agreement measured and reported here
    folded = prepare_model(model, channels_last=True)
    if mode == "folded":
        return folded, True
    if mode == "onnxruntime":
        import onnxruntime as ort

        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(folded.to(memory_format=torch.contiguous_format), (torch.zeros(1, 3, *res),), buf,
                              dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])

        def run(x):
            return torch.from_numpy(sess.run(None, {"x": x.contiguous().numpy()})[0])

        return run, False
    raise ValueError(mode)


SCALE, SHIFT = normalization_constants(MEAN, STD)


def to_input(image: np.ndarray, channels_last: bool) -> torch.Tensor:
    """The Predictor's normalisation of a uint8 image, for every model alike."""
    return normalize_uint8(image, SCALE, SHIFT, channels_last=channels_last)


#: what the models see: the demo frame (random weights) or a synthetic val image (``--weights trained``: the
#: runs' own data, so that their label maps have the class boundaries a trained model draws)
IMAGE = {"source": "demo"}


def load_image(res: tuple[int, int]) -> np.ndarray:
    """The shared Cityscapes demo frame resized to ``res`` (random pixels when the data is absent), or with
    ``IMAGE["source"] == "synthetic"`` the second synthetic val image resized to it."""
    from PIL import Image

    if IMAGE["source"] == "synthetic":
        return np.array(Image.fromarray(_synthetic_val_image()).resize((res[1], res[0]), Image.BILINEAR))
    demo = ROOT.parent / "shared" / "data" / "demo" / "cityscapes_frame_1024x512.png"
    if demo.is_file():
        return np.array(Image.open(demo).convert("RGB").resize((res[1], res[0]), Image.BILINEAR))
    return np.random.default_rng(0).integers(0, 256, (*res, 3), dtype=np.uint8)


@functools.cache
def _synthetic_val_image() -> np.ndarray:
    """The second synthetic val image, HxWx3 uint8 (made once: every cell's preparation asks for it)."""
    from eseg_cli.engine.evaluator import eval_dataset

    return eval_dataset("synthetic", None, "val")[1][0].permute(1, 2, 0).numpy()


def calibration_batches(res: tuple[int, int]) -> list[torch.Tensor]:
    """int8 calibration for every model alike: the demo frame at ``res``, its mirror image and two exposures."""
    image = load_image(res)
    variants = [image, image[:, ::-1], np.clip(image * 0.7, 0, 255), np.clip(image * 1.3, 0, 255)]
    return [to_input(np.ascontiguousarray(v).astype(np.uint8), False) for v in variants]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--resolutions", default="512x1024,1024x2048")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--pairs", default="S,Lite-S", help="S (ESeg-S vs DeepLabV3+), Lite-S (vs LRASPP)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--name", help="file stem of the JSON and Markdown written to --out (default: peers, or with "
                                   "--rewrite the rewritten JSON's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                    help="glibc malloc for every cell: as eseg sets it on CPU (tuned) or glibc's defaults")
    ap.add_argument("--admissible", default="bf16,int8",
                    help="modes beside the exact ones whose mIoU change on the quick-start model was measured within "
                         "0.5 of fp32 (reports/benchmarks/int8_routes_c2f.md: bf16 56.78 -> 56.79, int8 56.78 -> "
                         "56.83), for the models --accuracy does not measure; compared as a set")
    ap.add_argument("--accuracy", metavar="JSON[,JSON...]",
                    help="models' own bf16/int8 accuracy: benchmarks/peers_accuracy.py's JSON (the peers) and "
                         "benchmarks/int8_routes.py's (a trained ESeg run), comma-separated: a model's admissible "
                         "modes are then those measured within 0.5 of its fp32 mIoU, not --admissible")
    ap.add_argument("--bf16-head", choices=("exact", "coarse-to-fine"), default="exact",
                    help="how ESeg's head sums its levels in the bf16 mode (eseg predict --head): with "
                         "coarse-to-fine, --accuracy takes ESeg's bf16 accuracy from int8_routes.py's 'compiled bf16, "
                         "coarse-to-fine head' route (run with --heads)")
    ap.add_argument("--weights", choices=("random", "trained"), default="random",
                    help="random weights on the demo frame, or each model's trained run (--runs; see TRAINED_RUNS) on "
                         "a synthetic val image: a trained model's label map has many more class boundaries, which "
                         "the exact post-processing pays for")
    ap.add_argument("--runs", default=str(ROOT / "runs"), help="with --weights trained: the folder of the runs")
    ap.add_argument("--rewrite", metavar="JSON", help="only rewrite the report from an earlier run's JSON")
    args = ap.parse_args()
    args.admissible = [m for m in args.admissible.split(",") if m]
    args.name = args.name or (Path(args.rewrite).stem if args.rewrite else "peers")
    if args.rewrite:
        old = json.loads(Path(args.rewrite).read_text())
        m = old["meta"]
        args.threads, args.rounds, args.warmup = m["threads"], m["rounds"], m["warmup"]
        args.weights, args.accuracy = m.get("weights", "random"), m.get("accuracy")
        args.bf16_head = m.get("bf16_head", "exact")
        args.cpu = m.get("cpu")  # the machine that ran it (None: not recorded then)
        args.admissible = [x for x in m.get("admissible", args.admissible) if x not in EXACT_MODES]
        sys.argv = m["command"].split()[1:]
        post = [{**r, "kind": "postprocess"} for r in old.get("postprocess", [])]
        write_report(old["rows"] + post, args, [parse_size(r) for r in m["resolutions"]], m["modes"], date=m["date"])
        return
    torch.set_num_threads(args.threads)
    # before any model (a Predictor tunes malloc for the whole process); records what holds (not glibc: default)
    args.malloc = "tuned" if allocator.choose(args.malloc) else "default"
    torch.manual_seed(args.seed)
    resolutions = [parse_size(r) for r in args.resolutions.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    if "onnxruntime" in modes:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime is not installed (pip install -e '.[deploy]'): that mode is skipped", file=sys.stderr)
            modes.remove("onnxruntime")
    wanted = set(args.pairs.split(","))
    IMAGE["source"] = "synthetic" if args.weights == "trained" else "demo"
    pairs = [row for row in build_pairs(args.weights, Path(args.runs)) if row[0] in wanted]
    # every (model, mode, resolution, kind) cell, prepared once
    cells = []
    with torch.inference_mode():
        for pair, name, model in pairs:
            for res in resolutions:
                image = load_image(res)
                for mode in modes:
                    t0 = time.perf_counter()
                    fn, cl = make_variant(model, mode, res, args.threads, args.bf16_head)
                    x = to_input(image, cl)

                    def model_only(fn=fn, x=x):
                        return fn(x)

                    def e2e(fn=fn, image=image, cl=cl, res=res, compiled=mode in COMPILED_MODES):
                        return upsample_argmax(fn(to_input(image, cl)).float(), res, compiled=compiled).numpy()

                    graphs = counters["stats"]["unique_graphs"]
                    for _ in range(max(args.warmup, 1)):  # compiles here, for the compiled modes
                        model_only()
                        e2e()
                    if mode in COMPILED_MODES and counters["stats"]["unique_graphs"] == graphs:
                        raise SystemExit(f"{name} {mode} {res[0]}x{res[1]} did not compile (dynamo ran it eagerly): "
                                         "its times would not be what the mode says")
                    agreement = None
                    if mode not in EXACT_MODES:  # share of pixels whose class equals the fp32 model's
                        reference = upsample_argmax(prepare_model(model)(to_input(image, True)), res).numpy()
                        agreement = round(float((e2e() == reference).mean()), 5)
                    print(f"prepared {name} {mode} {res[0]}x{res[1]} in {time.perf_counter() - t0:.1f}s",
                          file=sys.stderr, flush=True)
                    for kind, f in (("model", model_only), ("e2e", e2e)):
                        cells.append({"pair": pair, "model": name, "mode": mode, "resolution": f"{res[0]}x{res[1]}",
                                      "kind": kind, "fn": f, "times_ms": [], "agreement": agreement})
            if pair == "Lite-S" and name.startswith("ESeg"):  # post-processing alone, on this model's logits
                for res in resolutions:
                    logits = prepare_model(model).forward(to_input(load_image(res), True)).float()

                    for post_mode in ("eager", "compiled"):  # ATen's argmaxes, or compiled ones
                        def post(logits=logits, res=res, compiled=post_mode == "compiled"):
                            return upsample_argmax(logits, res, compiled=compiled).numpy()

                        post()
                        cells.append({"pair": pair, "model": "post-processing (upsample + argmax)",
                                      "mode": post_mode, "resolution": f"{res[0]}x{res[1]}", "kind": "postprocess",
                                      "fn": post, "times_ms": []})
        rng = random.Random(args.seed)
        for r in range(args.rounds):
            order = list(range(len(cells)))
            rng.shuffle(order)
            for i in order:
                t0 = time.perf_counter()
                cells[i]["fn"]()
                cells[i]["times_ms"].append((time.perf_counter() - t0) * 1000)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    write_report(cells, args, resolutions, modes)


#: the admissible change of val mIoU from fp32, either way (``peers_accuracy.py`` decides its peers' with it too)
TOLERANCE = 0.5
#: ``int8_routes.py``'s routes that are this benchmark's modes (per ``--bf16-head``), and its model names as here
ROUTE_MODES = {"exact": {"compiled bf16": "bf16", "int8 pt2e": "int8"},
               "coarse-to-fine": {"compiled bf16, coarse-to-fine head": "bf16", "int8 pt2e": "int8"}}
ESEG_NAMES = {"eseg-lite-s": "ESeg-Lite-S", "eseg-s": "ESeg-S"}


def peer_accuracy(paths: str | None, bf16_head: str = "exact") -> dict[str, dict[str, bool]]:
    """``{model: {mode: admissible}}`` from JSON files (comma-separated): ``benchmarks/peers_accuracy.py``'s (each
    peer trained and scored in bf16 and int8) and ``benchmarks/int8_routes.py``'s (a trained ESeg run: its bf16 and
    int8 routes, admissible when within :data:`TOLERANCE` of its eager fp32 val mIoU; its bf16 route with the head
    ``bf16_head``, which must have been measured); nothing without a file."""
    out: dict[str, dict[str, bool]] = {}
    for path in (paths or "").split(","):
        if not path:
            continue
        data = json.loads(Path(path).read_text())
        if "targets" in data:  # int8_routes.py
            routes = {r["route"]: r for r in data["rows"]}
            ref = routes["eager fp32 (reference)"]["val_mIoU"]
            model = ESEG_NAMES.get(data["meta"]["model"], data["meta"]["model"])
            for route, mode in ROUTE_MODES[bf16_head].items():
                if route not in routes and mode == "bf16" and bf16_head != "exact":
                    raise SystemExit(f"{path} has no {route!r} route: run int8_routes.py with --heads, or drop "
                                     "--bf16-head")
                if route in routes:
                    out.setdefault(model, {})[mode] = abs(routes[route]["val_mIoU"] - ref) <= TOLERANCE
            continue
        for r in data["rows"]:
            if "admissible" in r:
                out.setdefault(r["model"], {})[r["mode"]] = bool(r["admissible"])
    return out


def _median(v):
    return statistics.median(v) if v else None


BOOTSTRAP_SAMPLES = 4000
# the deploy issue's targets: ESeg / peer ratio of minimums, end to end, best admissible mode vs best admissible mode
TARGETS = {"Lite-S": 0.55, "S": 0.75}


def bootstrap_ratio(a_ms: list[float], b_ms: list[float], stat, seed: int = 0,
                    samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``stat(a) / stat(b)`` over rounds. The rounds are resampled in pairs
    (round i of both cells together): the cells of one round ran back to back, so they share its load."""
    a, b = np.asarray(a_ms, float), np.asarray(b_ms, float)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    ratios = stat(a[idx], axis=1) / stat(b[idx], axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return round(float(low), 3), round(float(high), 3)


def write_report(cells, args, resolutions, modes, date: str | None = None) -> None:
    """``peers.json``: {"meta": {...}, "rows": [{pair, model, mode, resolution, kind, median_ms, min_ms, fps,
    times_ms, ratio_to_eseg, agreement (bf16 only)}], "best": [{pair, resolution, kind, exact, eseg_model,
    eseg_mode, eseg_ms, peer_model, peer_mode, peer_ms, ratio, ratio_of_minimums}], "fps_best_e2e": [{model,
    resolution, mode, fps, device}], "postprocess": [{..., median_ms, share_of_best_e2e: {mode, e2e_ms,
    share}}]} and ``peers.md``
    with the same numbers as tables. ``ratio_to_eseg`` and ``ratio`` are ESeg time / peer time."""
    rows = []
    for c in cells:
        med = _median(c["times_ms"])
        rows.append({k: c[k] for k in ("pair", "model", "mode", "resolution", "kind")} |
                    {"median_ms": round(med, 2), "min_ms": round(min(c["times_ms"]), 2),
                     "fps": round(1000 / med, 2), "times_ms": [round(t, 2) for t in c["times_ms"]]} |
                    ({"agreement": c["agreement"]} if c.get("agreement") is not None else {}))
    post = [r for r in rows if r["kind"] == "postprocess"]
    rows = [r for r in rows if r["kind"] != "postprocess"]
    eseg_names = {"S": "ESeg-S", "Lite-S": "ESeg-Lite-S"}
    index = {(r["model"], r["mode"], r["resolution"], r["kind"]): r for r in rows}
    for r in rows:
        ref = index.get((eseg_names[r["pair"]], r["mode"], r["resolution"], r["kind"]))
        r["ratio_to_eseg"] = round(ref["median_ms"] / r["median_ms"], 3) if ref else None  # ESeg time / this
    best = []
    sets = {"exact": set(EXACT_MODES), "admissible": set(EXACT_MODES) | set(args.admissible), "all": set(modes)}
    measured = peer_accuracy(args.accuracy, getattr(args, "bf16_head", "exact"))

    def allowed(model: str, which: str) -> set:
        """The modes of ``which`` set for ``model``: a peer's own measured accuracy decides its admissible ones."""
        if which == "admissible" and model in measured:
            return set(EXACT_MODES) | {m for m, ok in measured[model].items() if ok}
        return sets[which]

    for pair, eseg in eseg_names.items():
        peers = sorted({r["model"] for r in rows if r["pair"] == pair and r["model"] != eseg})
        for res, kind, peer, which in itertools.product(sorted({r["resolution"] for r in rows}), ("model", "e2e"),
                                                        peers, sets):
            mine, theirs = ([r for r in rows if r["model"] == model and r["resolution"] == res and r["kind"] == kind
                             and r["mode"] in allowed(model, which)] for model in (eseg, peer))
            if not mine or not theirs:
                continue
            entry = {"pair": pair, "resolution": res, "kind": kind, "set": which, "eseg_model": eseg,
                     "peer_model": peer}
            # the best mode of each model by each statistic, then the ratio and its interval over rounds
            for stat, np_stat, key in (("median_ms", np.median, "ratio"), ("min_ms", np.min, "ratio_of_minimums")):
                a, b = min(mine, key=lambda r: r[stat]), min(theirs, key=lambda r: r[stat])
                entry[key] = round(a[stat] / b[stat], 3)
                entry[f"{key}_ci95"] = list(bootstrap_ratio(a["times_ms"], b["times_ms"], np_stat, seed=args.seed))
                if key == "ratio":
                    entry.update(eseg_mode=a["mode"], eseg_ms=a["median_ms"], peer_mode=b["mode"],
                                 peer_ms=b["median_ms"])
                else:
                    entry.update(eseg_min_mode=a["mode"], eseg_min_ms=a["min_ms"], peer_min_mode=b["mode"],
                                 peer_min_ms=b["min_ms"])
            best.append(entry)
    weights = getattr(args, "weights", "random")
    meta = {"date": date or datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "device": f"cpu ({platform.processor() or platform.machine()})", "threads": args.threads,
            "cpu": args.cpu if hasattr(args, "cpu") else cpu_description(),
            "rounds": args.rounds, "warmup": args.warmup, "batch": 1,
            "dtype": "float32 (the bf16 mode: bfloat16 autocast)",
            "resolutions": [f"{h}x{w}" for h, w in resolutions], "modes": modes,
            "admissible": sorted(set(EXACT_MODES) | set(args.admissible)),
            "admissible_by_model": {m: sorted(allowed(m, "admissible")) for m in measured},
            "accuracy": args.accuracy, "bf16_head": getattr(args, "bf16_head", "exact"), "bootstrap": (
                f"95% percentile bootstrap over rounds, {BOOTSTRAP_SAMPLES} resamples, rounds resampled in pairs; "
                "a target 'ratio <= T' is met when the interval's upper end is <= T"),
            "command": "python " + " ".join(sys.argv), "malloc": args.malloc, "weights": weights,
            "image": "a synthetic val image" if weights == "trained" else "the demo frame",
            "onednn_primitive_cache_capacity": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
            "notes": "ratio = ESeg median / peer median (lower is better for ESeg); model = normalised tensor to "
                     "logits at the network's output stride; e2e = uint8 image to uint8 mask with the same exact "
                     "post-processing for every model; exact modes are all but bf16, whose 'agreement' is the share "
                     f"of pixels whose class equals the model's own fp32 mask ({weights} weights)"}
    # post-processing's share of ESeg-Lite-S's end-to-end time in its best mode among those that post-process as
    # it does (ATen's argmaxes: eager, folded, onnxruntime; compiled ones: compiled, bf16, int8)
    for p in post:
        e2e = [r for r in rows if r["model"] == "ESeg-Lite-S" and r["resolution"] == p["resolution"]
               and r["kind"] == "e2e" and (r["mode"] in COMPILED_MODES) == (p["mode"] == "compiled")]
        if e2e:
            b = min(e2e, key=lambda r: r["median_ms"])
            p["share_of_best_e2e"] = {"mode": b["mode"], "e2e_ms": b["median_ms"],
                                      "share": round(p["median_ms"] / b["median_ms"], 4)}
    # for Figure 4's measured panel: each model's best end-to-end FPS per resolution
    fig4 = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for res in meta["resolutions"]:
            cand = [r for r in rows if r["model"] == model and r["resolution"] == res and r["kind"] == "e2e"]
            if cand:
                b = max(cand, key=lambda r: r["fps"])
                fig4.append({"model": model, "resolution": res, "mode": b["mode"], "fps": b["fps"],
                             "device": f"{(meta.get('cpu') or {}).get('name') or meta['device']}, "
                                       f"{meta['threads']} threads"})
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", {"meta": meta, "rows": rows, "best": best, "fps_best_e2e": fig4,
                                                   "postprocess": post})
    atomic_write_text(out / f"{args.name}.md", markdown(rows, best, meta, post))
    print(markdown(rows, best, meta, post))


def markdown(rows, best, meta, post=()) -> str:
    lines = [f"# ESeg vs peers — {meta['device']}, {meta['threads']} threads, torch {meta['torch']}, "
             f"median of {meta['rounds']} interleaved rounds, batch 1, fp32 (bf16: compiled + bfloat16 autocast"
             + (", ESeg's head summed coarse to fine" if meta.get("bf16_head") == "coarse-to-fine" else "")
             + f", not exact); {meta.get('weights', 'random')} weights on {meta.get('image', 'the demo frame')}", "",
             f"`{meta['command']}` ({meta['date']})", ""]
    if meta.get("cpu"):
        lines[2:2] = [f"CPU: {meta['cpu']['name']} ({meta['cpu']['cores']} cores; {', '.join(meta['cpu']['flags'])})",
                      ""]
    for res in meta["resolutions"]:
        for kind in ("e2e", "model"):
            title = "end-to-end (uint8 image -> uint8 mask)" if kind == "e2e" else "model only (tensor -> logits)"
            lines += [f"## {res}, {title}: median ms (ratio ESeg / peer in the same mode)", "",
                      "| model | " + " | ".join(meta["modes"]) + " |", "|---|" + "---|" * len(meta["modes"])]
            for model in dict.fromkeys(r["model"] for r in rows):
                cells = []
                for mode in meta["modes"]:
                    r = next((r for r in rows if r["model"] == model and r["mode"] == mode and r["resolution"] == res
                              and r["kind"] == kind), None)
                    if r is None:
                        cells.append("-")
                    elif r["model"].startswith("ESeg"):
                        cells.append(f"{r['median_ms']:.1f}")
                    else:
                        cells.append(f"{r['median_ms']:.1f} ({r['ratio_to_eseg']:.2f})")
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
            lines.append("")
    titles = {"exact": "Best exact mode vs best exact mode",
              "admissible": f"Best admissible mode vs best admissible mode ({', '.join(meta['admissible'])}: the "
                            "modes whose measured mIoU change is within 0.5 of fp32)",
              "all": "Best mode vs best mode (every mode)"}
    if meta.get("admissible_by_model"):  # the peers' own measured accuracy (peers_accuracy.py) replaced the set
        titles["admissible"] = ("Best admissible mode vs best admissible mode (each model's modes whose measured "
                                "mIoU change is within 0.5 of its fp32: ESeg " + ", ".join(meta["admissible"]) +
                                "; " + "; ".join(f"{m} {', '.join(v)}" for m, v in meta["admissible_by_model"].items())
                                + f", from {Path(meta['accuracy']).name})")
    for which, title in titles.items():
        chosen = sorted((b for b in best if b.get("set") == which),
                        key=lambda b: (b["pair"], b["resolution"], b["kind"]))
        if not chosen:
            continue
        lines += [f"## {title}", "", "ratio = ESeg / peer (lower is better for ESeg), with its 95% bootstrap interval "
                  "over rounds", "", "| resolution | kind | ESeg (mode, median ms) | peer (mode, median ms) | "
                  "ratio of medians [95% CI] | ESeg (mode, min ms) | peer (mode, min ms) | "
                  "ratio of minimums [95% CI] |",
                  "|---|---|---|---|---|---|---|---|"]
        for b in chosen:
            lo, hi = b["ratio_ci95"]
            mlo, mhi = b["ratio_of_minimums_ci95"]
            lines.append(f"| {b['resolution']} | {b['kind']} | {b['eseg_model']} ({b['eseg_mode']}, "
                         f"{b['eseg_ms']:.1f}) | {b['peer_model']} ({b['peer_mode']}, {b['peer_ms']:.1f}) | "
                         f"{b['ratio']:.2f} [{lo:.2f}, {hi:.2f}] | {b['eseg_min_mode']}, {b['eseg_min_ms']:.1f} | "
                         f"{b['peer_min_mode']}, {b['peer_min_ms']:.1f} | "
                         f"{b['ratio_of_minimums']:.2f} [{mlo:.2f}, {mhi:.2f}] |")
        lines.append("")
    targets = [b for b in best if b.get("set") == "admissible" and b["kind"] == "e2e" and b["pair"] in TARGETS]
    if targets:
        lines += ["## Targets: ratio of minimums, end to end, best admissible vs best admissible", "",
                  "Met when the 95% interval's upper end is at or below the target.", "",
                  "| pair | resolution | ratio of minimums [95% CI] | target | met |", "|---|---|---|---|---|"]
        for b in sorted(targets, key=lambda b: (b["pair"], b["resolution"])):
            lo, hi = b["ratio_of_minimums_ci95"]
            t = TARGETS[b["pair"]]
            lines.append(f"| {b['eseg_model']} / {b['peer_model']} | {b['resolution']} | "
                         f"{b['ratio_of_minimums']:.2f} [{lo:.2f}, {hi:.2f}] | <= {t:.2f} | "
                         f"{'yes' if hi <= t else 'no'} |")
        lines.append("")
    agree = [r for r in rows if "agreement" in r and r["kind"] == "e2e"]
    if agree:
        lines += ["## Not exact: argmax agreement with the model's own fp32 mask "
                  f"({meta.get('image', 'the demo frame')}, {meta.get('weights', 'random')} weights)", "",
                  "| model | mode | resolution | pixels equal |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['mode']} | {r['resolution']} | {100 * r['agreement']:.2f}% |" for r in agree]
        lines.append("")
    if post:
        lines += ["## Post-processing (exact bilinear upsampling + argmax of ESeg-Lite-S's logits)", "",
                  "| resolution | argmax | median ms | share of ESeg-Lite-S end-to-end (best mode posting so) |",
                  "|---|---|---|---|"]
        for p in post:
            sh = p.get("share_of_best_e2e")
            lines.append(f"| {p['resolution']} | {p.get('mode', 'eager')} | {p['median_ms']:.2f} | " +
                         (f"{100 * sh['share']:.1f}% of {sh['e2e_ms']:.1f} ms ({sh['mode']}) |" if sh else "- |"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
