"""Does a faster training path change what it learns? Final val mIoU of quick-start runs, per precision and seed.

    for s in 0 1 2; do
      eseg train --scale lite-s --seed $s --amp none --run-dir runs/seeds/fp32-s$s --yes
      eseg train --scale lite-s --seed $s --amp bf16 --run-dir runs/seeds/bf16-s$s --yes
    done
    python benchmarks/train_accuracy.py runs/seeds/fp32-s0 runs/seeds/fp32-s1 ... runs/seeds/bf16-s2 \\
        --baseline runs/quickstart-old

Reads each run folder (its config, ``val.jsonl``, ``summary.json``) and writes
``reports/benchmarks/train_accuracy.{json,md}`` (``--name``): per run the final and best val mIoU, the logged
images/s (median of the log intervals) and the training seconds; per precision the mean ± std of the final mIoU over
seeds; and the paired difference bf16 - fp32 on the same seeds with its 95% Student-t interval (scipy).
``--baseline`` adds runs of an earlier release (trained the same way) for the wall-time comparison, and, where they
share a precision and seeds with this release's runs, the paired difference this - earlier.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eseg_cli.utils import atomic_write_json, atomic_write_text  # noqa: E402


def read_run(path: Path, release: str) -> dict:
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    val = [json.loads(line) for line in (path / "val.jsonl").read_text().splitlines() if line.strip()]
    log = [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((path / "summary.json").read_text())
    return {"run": path.name, "release": release, "seed": cfg["seed"], "amp": cfg.get("amp") or "fp32",
            "steps": summary["steps"], "final_miou": round(val[-1]["mIoU"], 2),
            "best_miou": round(max(v["mIoU"] for v in val), 2),
            "images_per_s": round(statistics.median(r["images_per_s"] for r in log), 2),
            "train_seconds": summary["seconds"]}


def _paired(a: dict | None, b: dict | None) -> dict | None:
    """``a - b`` on the seeds both have ({seed: mIoU} each), with its 95% Student-t interval; None under 2 seeds."""
    if not a or not b:
        return None
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    if len(d) < 2:
        return None
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    return {"seeds": seeds, "differences": [round(x, 2) for x in d], "mean": round(float(np.mean(d)), 2),
            "ci95": [round(float(ci.low), 2), round(float(ci.high), 2)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--baseline", nargs="*", type=Path, default=[], help="runs of the earlier release")
    ap.add_argument("--baseline-name", default="ed13474")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    ap.add_argument("--name", default="train_accuracy", help="the report's file name, without extension")
    args = ap.parse_args()
    rows = [read_run(p, "this") for p in args.runs] + [read_run(p, args.baseline_name) for p in args.baseline]
    groups, earlier = {}, {}
    for r in rows:
        (groups if r["release"] == "this" else earlier).setdefault(r["amp"], {})[r["seed"]] = r["final_miou"]
    summary = {amp: {"seeds": sorted(g), "mean": round(float(np.mean(list(g.values()))), 2),
                     "std": round(float(np.std(list(g.values()), ddof=1)), 2) if len(g) > 1 else None}
               for amp, g in groups.items()}
    paired = _paired(groups.get("bf16"), groups.get("fp32"))
    # this release against the earlier one, per precision, on the seeds both ran
    against = {amp: d for amp in sorted(set(groups) & set(earlier)) if (d := _paired(groups[amp], earlier[amp]))}
    atomic_write_json(args.out / f"{args.name}.json",
                      {"runs": rows, "by_precision": summary, "bf16_minus_fp32": paired,
                       f"this_minus_{args.baseline_name}": against, "command": "python " + " ".join(sys.argv)})
    lines = ["# Final val mIoU by precision and seed (ESeg-Lite-S, synthetic recipe, 1500 steps)", "",
             "| run | release | amp | seed | final mIoU | best mIoU | median images/s | train s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['release']} | {r['amp']} | {r['seed']} | {r['final_miou']:.2f} | "
              f"{r['best_miou']:.2f} | {r['images_per_s']:.1f} | {r['train_seconds']:.0f} |" for r in rows]
    lines += [""] + [f"- {amp}: final mIoU {s['mean']:.2f} ± {s['std'] if s['std'] is not None else 'n/a'} over "
                     f"seeds {s['seeds']}" for amp, s in summary.items()]
    if paired:
        lines.append(f"- bf16 - fp32 on the same seeds: {paired['differences']}, mean {paired['mean']:+.2f}, 95% "
                     f"interval [{paired['ci95'][0]:+.2f}, {paired['ci95'][1]:+.2f}] (paired Student t)")
    for amp, d in against.items():
        lines.append(f"- this - {args.baseline_name} ({amp}) on the same seeds: {d['differences']}, mean "
                     f"{d['mean']:+.2f}, 95% interval [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] (paired Student t)")
    atomic_write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
