"""What bf16 and int8 cost the peers in accuracy: each peer trained with the synthetic recipe, then scored in
fp32, bf16 and int8 on the synthetic val set, as ``int8_routes.py`` scores ESeg.

    pip install -e '.[bench,deploy]'            # segmentation-models-pytorch, torchao
    python benchmarks/peers_accuracy.py          # trains both peers (about 30 minutes on 2 cores), then scores them

``benchmarks/peers.py`` compares ESeg and its peers in the modes whose mIoU stays within 0.5 of fp32 (the
"admissible" modes). ESeg's bf16 and int8 changes are measured on trained ESeg models (``int8_routes.py``); the
peers in ``peers.py`` have random weights, so their own changes have to be measured here: LRASPP-MobileNetV3-L
(hardswish) and DeepLabV3+ (EfficientNet-B1, SiLU) are the activations int8 handles worst.

Each peer is trained from scratch by eseg's own trainer (``eseg_cli.engine.trainer.train`` with the model given)
on ``recipes/synthetic.yaml``, the quick start's recipe (same steps, crops, optimiser, bf16 autocast, seed), into
``--runs``/<peer>; a finished run is reused. Then, on the synthetic val images at their size, with the same
normalisation and post-processing for every mode (``upsample_argmax`` of the logits at the model's stride):

- ``fp32``: eager, batch norm folded (``prepare_model``): the reference;
- ``bf16``: compiled with freezing under bfloat16 autocast, as ``peers.py``'s bf16 mode;
- ``int8``: ``quantize_int8`` (torchao pt2e, compiled), calibrated on 16 training images, as ``peers.py``'s int8
  mode and ``eseg predict --int8``.

Writes ``reports/benchmarks/peers_accuracy.{json,md}``: per model and mode, val mIoU, its change from fp32 and
the share of pixels whose class equals fp32's. ``peers.py --accuracy`` reads it to decide each model's own
admissible modes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from peers import TOLERANCE, LowRes  # noqa: E402
from train_speed import build as build_full  # noqa: E402

from eseg_cli.engine import load_config  # noqa: E402
from eseg_cli.engine.evaluator import eval_dataset  # noqa: E402
from eseg_cli.engine.metrics import ConfusionMatrix  # noqa: E402
from eseg_cli.engine.trainer import train  # noqa: E402
from eseg_cli.inference import allocator, prepare_model, upsample_argmax  # noqa: E402
from eseg_cli.inference.int8 import quantize_int8, run_calibration_images  # noqa: E402
from eseg_cli.inference.precision import autocast  # noqa: E402
from eseg_cli.inference.predictor import normalization, normalization_constants, normalize_uint8  # noqa: E402
from eseg_cli.inference.runtime import load_checkpoint, load_weights  # noqa: E402
from eseg_cli.utils import atomic_write_json, atomic_write_text  # noqa: E402

NUM_CLASSES = 19
#: key -> the name peers.py reports (its prefix picks train_speed.build's model)
PEERS = {"lraspp": "LRASPP-MobileNetV3-L (torchvision)", "deeplabv3plus": "DeepLabV3+ (EfficientNet-B1, OS16, smp)"}


def build_peer(key: str) -> tuple[nn.Module, Callable[[], LowRes]]:
    """The peer as ``train_speed.py`` trains it (full-size logits), and a function giving the trained model as
    ``peers.py`` times it (:class:`peers.LowRes`: logits at the model's own stride)."""
    full = build_full(PEERS[key])
    if key == "lraspp":
        return full, lambda: LowRes("lraspp", full.model)

    def low():
        full.model.segmentation_head[1] = nn.Identity()  # its x4 upsampling moves into post-processing (peers.py)
        return LowRes("smp", full.model)

    return full, low


def train_peer(key: str, run_dir: Path, steps: int | None, seed: int) -> tuple[nn.Module, dict, dict]:
    """Train ``key`` with the synthetic recipe into ``run_dir`` (reusing a finished run); the trained model (the
    run's best checkpoint, its EMA weights where it has them, as the Predictor loads them) as peers.py times it,
    the checkpoint and the run's summary."""
    full, low = build_peer(key)
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    if not summary.get("finished") or (steps and summary.get("steps") != steps):
        # the quick start's recipe (its scale's keys do not reach a given model)
        cfg = load_config("synthetic", None, {"seed": seed, **({"steps": steps, "eval_interval": steps,
                                                                 "checkpoint_interval": steps} if steps else {})})
        summary = train(cfg, run_dir, model=full, overwrite=True, handle_signals=False)
    path = run_dir / "checkpoints" / "best.pt"
    state = load_checkpoint(path)
    load_weights(full, state["ema"] if state.get("ema") is not None else state["model"], str(path))
    model = low().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, state, summary


def score(fn, items, scale, shift, channels_last: bool) -> tuple[float, list[torch.Tensor]]:
    """val mIoU of ``fn`` (normalised batch -> logits at the model's stride) and its label maps."""
    cm = ConfusionMatrix(NUM_CLASSES)
    labels = []
    for img, mask in items:
        x = normalize_uint8(img[None], scale, shift, channels_last=channels_last)
        lab = upsample_argmax(fn(x).float(), tuple(mask.shape[-2:]))
        cm.update(lab.long(), mask[None])
        labels.append(lab)
    return cm.compute()["mIoU"], labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated: {', '.join(PEERS)}")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "peers"), help="folder of the peers' training runs")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibrate", type=int, default=16, help="training images to calibrate int8 on")
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--name", default="peers_accuracy")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    allocator.choose("tuned")
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    val = eval_dataset("synthetic", None, "val")
    items = [val[i] for i in range(len(val))]
    rows = []
    for key in args.peers.split(","):
        if key not in PEERS:
            raise SystemExit(f"unknown peer {key!r}; choose from {', '.join(PEERS)}")
        model, state, summary = train_peer(key, Path(args.runs) / key, args.steps, args.seed)
        # the normalisation the run trained with, and calibration images as `eseg predict --int8` takes them
        scale, shift = normalization_constants(*normalization(state))
        calibration = [normalize_uint8(x, scale, shift, channels_last=False)
                       for x in run_calibration_images(state, args.calibrate)]
        log(f"{PEERS[key]}: trained ({summary.get('steps')} steps, {summary.get('seconds')} s, best val mIoU "
            f"{summary.get('best_mIoU')})")
        with torch.inference_mode():
            fp32 = prepare_model(model, channels_last=True)
            compiled = prepare_model(model, channels_last=True, compile=True)

            def bf16(x, compiled=compiled):
                with autocast("cpu", "bf16"):
                    return compiled(x)

            int8 = quantize_int8(prepare_model(model, channels_last=False), calibration, min_agreement=0)
            ref_miou, ref = score(fp32, items, scale, shift, True)
            rows.append({"model": PEERS[key], "mode": "fp32", "val_mIoU": ref_miou, "change": 0.0, "agreement": 1.0,
                         "steps": summary.get("steps"), "train_seconds": summary.get("seconds")})
            for mode, fn in (("bf16", bf16), ("int8", int8)):
                miou, labels = score(fn, items, scale, shift, True)
                same = sum(int((a == b).sum()) for a, b in zip(labels, ref)) / sum(a.numel() for a in ref)
                rows.append({"model": PEERS[key], "mode": mode, "val_mIoU": miou, "change": miou - ref_miou,
                             "agreement": same, "admissible": abs(miou - ref_miou) <= TOLERANCE})
                log(f"{PEERS[key]} {mode}: val mIoU {miou:.2f} ({miou - ref_miou:+.2f}), agreement {same:.2%}")
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
            "recipe": "synthetic", "seed": args.seed, "calibrate": args.calibrate, "val_images": len(items),
            "tolerance": TOLERANCE, "torch": torch.__version__, "seconds": round(time.perf_counter() - t0)}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", {"meta": meta, "rows": rows})
    atomic_write_text(out / f"{args.name}.md", markdown(meta, rows))
    print(markdown(meta, rows))


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# The peers' accuracy in bf16 and int8 — synthetic val ({meta['val_images']} images)", "",
             f"`python {meta['command']}` ({meta['date']}; torch {meta['torch']}). Each peer trained from scratch "
             f"with `recipes/synthetic.yaml` (seed {meta['seed']}) by eseg's trainer; bf16 = compiled under "
             f"bfloat16 autocast; int8 = `quantize_int8` calibrated on {meta['calibrate']} training images. "
             f"Admissible: val mIoU within {meta['tolerance']} of fp32 (what `peers.py --accuracy` reads).", "",
             "| model | mode | val mIoU | change | pixels equal to fp32 | admissible |", "|---|---|---|---|---|---|"]
    for r in rows:
        ok = "-" if r["mode"] == "fp32" else ("yes" if r["admissible"] else "no")
        lines.append(f"| {r['model']} | {r['mode']} | {r['val_mIoU']:.2f} | {r['change']:+.2f} | "
                     f"{100 * r['agreement']:.2f}% | {ok} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
