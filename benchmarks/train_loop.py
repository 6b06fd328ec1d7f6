"""`eseg train`'s logged images/s against the bare eager step, each in a process of its own, interleaved rounds.

    python benchmarks/train_loop.py --rounds 4 --steps 200

The issue's measure of the training loop: ``eseg train --scale lite-s`` on the built-in synthetic set with its own
recipe (the default path: channels_last, bf16 where the CPU has it, the tuned malloc) logs images/s every 20
steps; the reference is a bare eager float32 NCHW training step of the same model (forward, cross-entropy,
backward, torch's default AdamW, 4 x 256x256 random data: ``train_speed.py``'s ``eager`` cell). In
``train_speed.py`` every cell shares one process, and so one heap; here each measurement is a fresh process, as a
user runs it. ``eseg train`` also runs with ``ESEG_MALLOC=default``. The bare step is timed twice, with glibc's
default malloc (what a user's own script gets) and with the malloc that ``eseg train`` sets
(``eseg_cli.inference.allocator``), and the ratio is given against both. Each round runs the cells in a shuffled
order. The train run's images/s is the median of its logged intervals after the first (which holds the warm-up);
the bare step's is its median over 5 timings of ``--bare-steps`` steps. ``eseg train --amp none`` can be added
(``--fp32``). Writes ``reports/benchmarks/train_loop.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare(malloc: str, threads: int, rounds: int, steps: int) -> float:
    """In this process: the median images/s of the bare eager step (``train_speed.StepCell``)."""
    os.environ["ESEG_MALLOC"] = malloc
    import torch

    from eseg_cli.inference.allocator import keep_freed_memory

    if malloc == "tuned" and not keep_freed_memory():
        raise SystemExit("malloc cannot be tuned here (not glibc)")
    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_speed import StepCell

    cell = StepCell("ESeg-Lite-S", 4, (256, 256), "eager", 0)
    cell.warm(2)
    return statistics.median(cell.run(steps) for _ in range(rounds))


def run_train(threads: int, steps: int, amp: str | None, malloc: str, tmp: Path) -> dict:
    out = tmp / f"run-{random.getrandbits(32):08x}"
    cmd = [sys.executable, "-m", "eseg_cli", "train", "--scale", "lite-s", "--steps", str(steps),
           "--eval-interval", str(steps + 1), "--threads", str(threads), "-o", str(out), "--yes"]
    if amp:
        cmd += ["--amp", amp]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp,
                   env={**os.environ, "ESEG_MALLOC": malloc})
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    ips = [r["images_per_s"] for r in log if "images_per_s" in r][1:]
    return {"images_per_s": statistics.median(ips), "memory_mb": max(r.get("memory_mb", 0) for r in log)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200, help="steps of each eseg train run")
    ap.add_argument("--bare-steps", type=int, default=5, help="steps per timing of the bare step (5 timings)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fp32", action="store_true", help="add eseg train --amp none")
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--name", default="train_loop")
    ap.add_argument("--bare", choices=("default", "tuned"), help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.bare:
        print(json.dumps({"images_per_s": bare(args.bare, args.threads, 5, args.bare_steps)}))
        return
    cells = ["eseg train", "eseg train (ESEG_MALLOC=default)", "bare eager (malloc default)",
             "bare eager (malloc tuned)"]
    if args.fp32:
        cells.append("eseg train --amp none")
    results: dict[str, list[float]] = {c: [] for c in cells}
    memory: dict[str, list[float]] = {}
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="eseg-train-loop-") as tmp:
        for r in range(args.rounds):
            for cell in rng.sample(cells, len(cells)):
                if cell.startswith("eseg train"):
                    res = run_train(args.threads, args.steps, "none" if "none" in cell else None,
                                    "default" if "default" in cell else "tuned", Path(tmp))
                    memory.setdefault(cell, []).append(res["memory_mb"])
                else:
                    malloc = "tuned" if "tuned" in cell else "default"
                    out = subprocess.run([sys.executable, __file__, "--bare", malloc, "--threads", str(args.threads),
                                          "--bare-steps", str(args.bare_steps)], check=True, capture_output=True,
                                         text=True, env={**os.environ, "ESEG_MALLOC": malloc})
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                results[cell].append(res["images_per_s"])
                print(f"round {r + 1}: {cell} {res['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)
    write(results, memory, args)


def write(results: dict, memory: dict, args) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from train_speed import cpu_description

    from eseg_cli.utils import atomic_write_json, atomic_write_text

    med = {c: statistics.median(v) for c, v in results.items()}
    ratios = {f"{t} / {b}": round(med[t] / med[b], 3) for t in med if t.startswith("eseg") for b in med
              if b.startswith("bare")}
    ratios["eseg train / eseg train (ESEG_MALLOC=default)"] = round(
        med["eseg train"] / med["eseg train (ESEG_MALLOC=default)"], 3)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "cpu": cpu_description(), "threads": args.threads, "rounds": args.rounds, "steps": args.steps,
            "command": "python " + " ".join(sys.argv)}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", {"meta": meta, "images_per_s": results, "median": med,
                                                  "ratios": ratios, "train_memory_mb": memory})
    cpu = meta["cpu"]
    lines = [f"# eseg train's loop against the bare eager step — {cpu['model']}, {args.threads} threads, "
             f"torch {meta['torch']}", "",
             f"CPU flags: {' '.join(cpu['flags']) or 'n/a'}. Measured {meta['date']}: `{meta['command']}` "
             f"({args.rounds} interleaved rounds, each a fresh process).", "",
             "| cell | images/s per round | median |", "|---|---|---|"]
    lines += [f"| {c} | {', '.join(f'{x:.1f}' for x in v)} | {med[c]:.1f} |" for c, v in results.items()]
    lines += ["", "| ratio of medians | |", "|---|---|"] + [f"| {k} | {v:.2f}x |" for k, v in ratios.items()]
    if memory:
        lines += ["", "Peak memory logged by eseg train: " + ", ".join(
            f"{c} {max(v):.0f} MB" for c, v in memory.items()) + "."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / f"{args.name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
