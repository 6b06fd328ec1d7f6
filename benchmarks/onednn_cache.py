"""Does oneDNN's primitive cache thrash in multi-scale + flip inference? Its default capacity against a larger one.

    python benchmarks/onednn_cache.py --scale S --size 256x512 --images 4 --rounds 2 --threads 2

oneDNN compiles one kernel (a primitive) per convolution and input shape and keeps the last
``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` of them (default 1024). msflip runs the network at 6 scales (and their flips,
which share shapes), so it needs about 6x the primitives of one pass; when they do not fit, every image
recreates them. The capacity is read when oneDNN starts, so each setting runs in its own process; the processes
alternate (default, larger, default, larger ...), each predicting ``--images`` same-size random images after one
warm-up image (``Predictor(mode="msflip")``, the path ``eseg eval --mode msflip`` takes; random ESeg weights: the
time does not depend on them). Separate untimed children count the primitives oneDNN creates for two images
after the warm-up (``torch.backends.mkldnn.verbose``): with a cache that holds them all, a warmed-up image
creates none.

Prints one JSON object: per-image seconds per setting and round, medians, and cache misses per image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LARGE = "16384"


def child(args) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from eseg_cli.inference import Predictor
    from eseg_cli.models import build_model
    from eseg_cli.utils import parse_size

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = parse_size(args.size, "--size")
    model = build_model(args.scale, num_classes=19).eval()
    p = Predictor(model, device="cpu", mode="msflip")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.images + 1)]
    p.predict(images[0])  # warm-up: creates every primitive once
    times = []
    # --count: oneDNN prints a line per primitive it creates (a cache miss) on the warmed-up images
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON_CREATION if args.count else 0):
        for im in images[1:]:
            t = time.perf_counter()
            p.predict(im)
            times.append(time.perf_counter() - t)
    print(json.dumps({"seconds": times}))


def creations(args, cap: str | None, images: int = 2) -> float:
    """Primitives oneDNN creates per warmed-up image, in a child that predicts a warm-up image and then
    ``images`` more under oneDNN's creation log (one ``create:cache_miss`` line per primitive made)."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if cap:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = cap
    cmd = [sys.executable, __file__, "--child", "--scale", args.scale, "--size", args.size, "--images", str(images),
           "--threads", str(args.threads), "--count"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return sum("create:cache_miss" in ln for ln in out.splitlines()) / images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="S")
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    settings = {"default (1024)": None, f"{LARGE}": LARGE}
    rows = {k: [] for k in settings}
    for _ in range(args.rounds):
        for name, cap in settings.items():
            env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
            if cap:
                env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = cap
            cmd = [sys.executable, __file__, "--child", "--scale", args.scale, "--size", args.size, "--images",
                   str(args.images), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rows[name].append(json.loads(out.strip().splitlines()[-1])["seconds"])
    med = {k: statistics.median(t for r in v for t in r) for k, v in rows.items()}
    a, b = med["default (1024)"], med[LARGE]
    result = {"scale": args.scale, "size": args.size, "mode": "msflip (6 scales x 2 flips)", "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "per_image_s": rows,
              "median_s": {k: round(v, 4) for k, v in med.items()}, "default_over_large": round(a / b, 3),
              "primitives_created_per_warm_image": {
                  k: creations(args, cap) for k, cap in settings.items()},
              "command": "python " + " ".join(sys.argv)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
