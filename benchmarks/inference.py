"""Inference latency of one model under the speed-ups eseg offers, measured side by side in one run.

    python benchmarks/inference.py --scale S --resolution 512x1024 --threads 2 --runs 5 [--compile]

Prints a table (and ``--json``) of median latency per variant and its ratio to plain eager. The machine
may be shared and noisy: compare ratios from one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json

from eseg_cli.analysis.profiler import measure_latency
from eseg_cli.models import build_model
from eseg_cli.utils import parse_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="S")
    ap.add_argument("--resolution", default="512x1024")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = parse_size(args.resolution)
    model = build_model(args.scale).eval()
    variants = [("eager", {"eager": True}), ("channels_last", {"eager": True, "channels_last": True}),
                ("fuse_bn", {"eager": True, "fuse_bn": True}),
                ("fuse_bn+channels_last", {"eager": True, "fuse_bn": True, "channels_last": True}),
                ("prepared (Predictor path, labels out)", {})]
    if args.compile:
        variants += [("compile", {"eager": True, "compile": True}), ("prepared+compile", {"compile": True})]
    rows = []
    for name, kw in variants:
        r = measure_latency(model, res, runs=args.runs, warmup=args.warmup, threads=args.threads, device=args.device,
                            **kw)
        rows.append({"variant": name, "latency_ms": r["latency_ms"], "device": r["device"]})
    base = rows[0]["latency_ms"]
    for r in rows:
        r["speedup_vs_eager"] = base / r["latency_ms"]
    if args.json:
        print(json.dumps({"model": args.scale, "resolution": args.resolution, "rows": rows}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.scale} at {args.resolution}, batch 1, {rows[0]['device']}")
    for c in ("variant", "median ms", "speed-up vs eager"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["variant"], f"{r['latency_ms']:.1f}", f"{r['speedup_vs_eager']:.2f}x")
    Console().print(t)


if __name__ == "__main__":
    main()
