"""oneDNN's depthwise-convolution backward in bfloat16 against float32, for the depthwise convs of ESeg-S's encoder.

    python benchmarks/depthwise_backward.py --threads 2 --rounds 5

Times ``aten.convolution_backward`` alone, the input's gradient and the weights' gradient separately, channels_last,
for each (batch, channels, size, kernel, stride) of EfficientNet-B1's depthwise convs in a 4 x 512x512 training step
(and 3x3 stride-1 ones like the BiFPN's), in bfloat16 and in float32, interleaved rounds, median milliseconds.
This is the measurement behind :func:`eseg_cli.models.fast_backward.slow_bf16_depthwise`: which depthwise convs
get a float32 backward under bf16 autocast. Other CPUs (AMX) may draw the line elsewhere: run it there.
Writes ``reports/benchmarks/depthwise_backward.{json,md}`` (``--name``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_speed import cpu_description  # noqa: E402

from eseg_cli.inference import allocator  # noqa: E402
from eseg_cli.utils import atomic_write_json, atomic_write_text  # noqa: E402

# (batch, channels, input size, kernel, stride): EfficientNet-B1's depthwise convs at 4 x 512x512, then 3x3 stride-1
# ones (B1's and the BiFPN's)
SHAPES = [(4, 96, 256, 3, 2), (4, 144, 128, 5, 2), (4, 240, 64, 5, 1), (4, 240, 64, 3, 2), (4, 672, 32, 5, 1),
          (4, 672, 32, 5, 2), (4, 1152, 16, 5, 1), (4, 96, 128, 3, 1), (4, 144, 128, 3, 1), (4, 480, 32, 3, 1)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def cell(shape, dtype):
    n, c, h, k, s = shape
    x = torch.randn(n, c, h, h, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, k, k, dtype=dtype).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(torch.nn.functional.conv2d(x, w, None, s, k // 2, 1, c))

    def grad(which):
        mask = [which == "input", which == "weight", False]
        return lambda: torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [k // 2, k // 2], [1, 1], False,
                                                           [0, 0], c, mask)
    return {"input": grad("input"), "weight": grad("weight")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="calls per timing")
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--name", default="depthwise_backward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    allocator.choose("tuned")
    fns = {(shape, d, part): f for shape in SHAPES for d, dt in DTYPES.items() for part, f in cell(shape, dt).items()}
    times: dict = {key: [] for key in fns}
    for f in fns.values():
        f()  # creates oneDNN's kernel
    for _ in range(args.rounds):
        for key, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(args.repeat):
                f()
            times[key].append((time.perf_counter() - t0) / args.repeat * 1e3)
    rows = []
    for shape in SHAPES:
        med = {(d, part): statistics.median(times[(shape, d, part)]) for d in DTYPES for part in ("input", "weight")}
        n, c, h, k, s = shape
        rows.append({"shape": f"{n}x{c}x{h}x{h}", "kernel": k, "stride": s,
                     **{f"{d}_{part}_ms": round(v, 2) for (d, part), v in med.items()},
                     "bf16_over_fp32": round((med["bf16", "input"] + med["bf16", "weight"])
                                             / (med["fp32", "input"] + med["fp32", "weight"]), 2)})
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "cpu": cpu_description(), "threads": args.threads, "rounds": args.rounds, "repeat": args.repeat,
            "command": "python " + " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{args.name}.json", {"meta": meta, "rows": rows})
    lines = [f"# Depthwise-convolution backward, bf16 against fp32 — {meta['cpu']['model']}, {args.threads} threads, "
             f"torch {meta['torch']}", "",
             f"CPU flags: {' '.join(meta['cpu']['flags'])}. Measured {meta['date']}: `{meta['command']}` "
             f"({args.rounds} interleaved rounds; median ms of `aten.convolution_backward`, channels_last).", "",
             "| input | kernel | stride | bf16 input grad | bf16 weight grad | fp32 input grad | fp32 weight grad "
             "| bf16 / fp32 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['kernel']}x{r['kernel']} | {r['stride']} | {r['bf16_input_ms']} | "
                     f"{r['bf16_weight_ms']} | {r['fp32_input_ms']} | {r['fp32_weight_ms']} | {r['bf16_over_fp32']} |")
    atomic_write_text(out / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
