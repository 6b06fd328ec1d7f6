"""Prediction with glibc's default malloc against the one eseg sets (``eseg_cli.inference.allocator``), each cell a
fresh process, interleaved rounds.

    python benchmarks/malloc_predict.py --run runs/quickstart --rounds 2 --size 1024x2048

A cell is a ``Predictor`` on ``--run``'s checkpoint in one mode (``folded``: the default eager path; ``compiled``:
``compile=True``; ``bf16``: ``compile=True, amp="bf16"``) under one malloc (``default``: ``ESEG_MALLOC=default``;
``tuned``: what the Predictor sets on CPU), timing ``predict`` end to end (uint8 image in, class ids out at the
image's size) on ``--images`` random images after two warm-up images (compiling included there). Writes
``reports/benchmarks/malloc_predict.{json,md}`` with each cell's median and minimum ms per image and the default /
tuned ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {"folded": {}, "compiled": {"compile": True}, "bf16": {"compile": True, "amp": "bf16"}}


def cell(run: str, mode: str, size: tuple[int, int], images: int, threads: int) -> list[float]:
    """In this process: ms per image of ``images`` predictions."""
    import numpy as np
    import torch

    from eseg_cli import Predictor

    torch.set_num_threads(threads)
    p = Predictor(run, device="cpu", **MODES[mode])
    rng = np.random.default_rng(0)
    batch = [(rng.random((*size, 3)) * 255).astype(np.uint8) for _ in range(2)]
    for im in batch:
        p.predict(im)
    times = []
    for i in range(images):
        t = time.perf_counter()
        p.predict(batch[i % 2])
        times.append(1000 * (time.perf_counter() - t))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run folder or checkpoint (e.g. the quick start's)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--size", default="1024x2048")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--name", default="malloc_predict")
    ap.add_argument("--cell", nargs=2, metavar=("MODE", "MALLOC"), help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    from eseg_cli.utils import parse_size

    size = parse_size(args.size)
    if args.cell:
        print(json.dumps(cell(args.run, args.cell[0], size, args.images, args.threads)))
        return
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES):
        raise SystemExit(f"unknown modes {sorted(set(modes) - set(MODES))}; choose from {', '.join(MODES)}")
    cells = [(m, malloc) for m in modes for malloc in ("default", "tuned")]
    times: dict[str, list[float]] = {f"{m} / {malloc}": [] for m, malloc in cells}
    rng = random.Random(0)
    for r in range(args.rounds):
        for m, malloc in rng.sample(cells, len(cells)):
            out = subprocess.run([sys.executable, __file__, "--run", args.run, "--size", args.size, "--images",
                                  str(args.images), "--threads", str(args.threads), "--cell", m, malloc],
                                 check=True, capture_output=True, text=True, env={**os.environ, "ESEG_MALLOC": malloc})
            t = json.loads(out.stdout.strip().splitlines()[-1])
            times[f"{m} / {malloc}"] += t
            print(f"round {r + 1}: {m} malloc {malloc}: median {statistics.median(t):.1f} ms", file=sys.stderr,
                  flush=True)
    write(times, modes, args)


def write(times: dict, modes: list[str], args) -> None:
    import torch
    from train_speed import cpu_description

    from eseg_cli.utils import atomic_write_json, atomic_write_text

    stat = {k: {"median_ms": round(statistics.median(v), 1), "min_ms": round(min(v), 1)} for k, v in times.items()}
    ratios = {m: {"median": round(stat[f"{m} / default"]["median_ms"] / stat[f"{m} / tuned"]["median_ms"], 3),
                  "min": round(stat[f"{m} / default"]["min_ms"] / stat[f"{m} / tuned"]["min_ms"], 3)} for m in modes}
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "cpu": cpu_description(), "threads": args.threads, "size": args.size, "rounds": args.rounds,
            "images": args.images, "command": "python " + " ".join(sys.argv)}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", {"meta": meta, "ms": times, "stats": stat, "speedup": ratios})
    cpu = meta["cpu"]
    lines = [f"# Predictor with glibc's default malloc and with eseg's — {cpu['model']}, {args.threads} threads, "
             f"torch {meta['torch']}", "",
             f"CPU flags: {' '.join(cpu['flags']) or 'n/a'}. Measured {meta['date']}: `{meta['command']}` "
             f"({args.rounds} interleaved rounds, each cell a fresh process timing {args.images} images at "
             f"{args.size} end to end).", "",
             "| mode | default malloc, ms (median / min) | eseg's malloc, ms (median / min) "
             "| speed-up (medians / minima) |",
             "|---|---|---|---|"]
    for m in modes:
        d, t = stat[f"{m} / default"], stat[f"{m} / tuned"]
        lines.append(f"| {m} | {d['median_ms']} / {d['min_ms']} | {t['median_ms']} / {t['min_ms']} | "
                     f"{ratios[m]['median']:.2f}x / {ratios[m]['min']:.2f}x |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / f"{args.name}.md", text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
