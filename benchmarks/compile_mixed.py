"""``predict --compile`` over images of mixed sizes: one dynamic-shape compilation against bucketing by padded size.

    python benchmarks/compile_mixed.py --run runs/quickstart --threads 2 --passes 3

Variants, each in its own process with an empty inductor cache (so no variant reuses another's compiled code):

- ``dynamic``: ``torch.compile(dynamic=True)`` with inductor freezing, the images at their own sizes: exact.
- ``bucket``: ``torch.compile(dynamic=False)``, each image's normalised tensor padded (zeros: the mean colour)
  at the bottom and right to the next multiple of ``--bucket`` and the labels cropped back: one compilation per
  bucket, but the network sees other pixels, so its labels are not the unpadded model's.
- ``static``: ``torch.compile(dynamic=False)`` at each image's own size (the previous behaviour: one
  compilation per size); ``--variants`` leaves it out by default (each Lite-S compile takes minutes here).

Per variant: the first pass over the images (compilation included) in seconds, the number of graphs compiled
(``torch._dynamo``'s ``unique_graphs`` counter), the median seconds per image over the later passes, the share
of pixels whose label equals eager PyTorch's (the exact reference) and the oneDNN primitives created in the later
passes (``torch.backends.mkldnn.verbose``: none when its cache holds every kernel). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((256, 512), (240, 480), (300, 400), (360, 500))


def child(args) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch._dynamo.utils import counters

    sys.path.insert(0, str(ROOT))
    from eseg_cli.data import build_dataset
    from eseg_cli.inference import Predictor
    from eseg_cli.inference.prepare import compile_inference

    torch.set_num_threads(args.threads)
    ds = build_dataset("synthetic", None, "val")
    images = [np.asarray(Image.open(ds.files[i][0]).convert("RGB").resize((w, h), Image.BILINEAR))
              for i, (h, w) in enumerate(SIZES)]
    ref = Predictor(args.run, device="cpu")
    want = [ref.predict(im) for im in images]
    p = Predictor(args.run, device="cpu")
    compile_inference(p.model, dynamic=args.variant == "dynamic")

    def predict(im):
        x = p.to_tensor(im)
        if args.variant != "bucket":
            return p.labels(x)[0].numpy()
        h, w = x.shape[-2:]
        ph, pw = -h % args.bucket, -w % args.bucket
        xp = F.pad(x, (0, pw, 0, ph)).contiguous(memory_format=torch.channels_last)
        return p.labels(xp)[0, :h, :w].numpy()

    t = time.perf_counter()
    first = [predict(im) for im in images]
    first_s = time.perf_counter() - t
    graphs = counters["stats"]["unique_graphs"]
    per_image = []
    # oneDNN prints a line per primitive it creates to the process's stdout (counted by the parent)
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON_CREATION):
        for _ in range(args.passes - 1):
            for im in images:
                t = time.perf_counter()
                predict(im)
                per_image.append(time.perf_counter() - t)
    agree = float(np.mean([(a == b).mean() for a, b in zip(first, want)]))
    print(json.dumps({"variant": args.variant, "first_pass_s": round(first_s, 2), "graphs_compiled": graphs,
                      "graphs_after_all_passes": counters["stats"]["unique_graphs"],
                      "per_image_s": [round(v, 4) for v in per_image],
                      "median_per_image_s": round(statistics.median(per_image), 4),
                      "agreement_with_eager": agree}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="A run folder or checkpoint (e.g. runs/quickstart).")
    ap.add_argument("--variants", default="dynamic,bucket")
    ap.add_argument("--bucket", type=int, default=256)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        child(args)
        return
    rows = []
    for v in args.variants.split(","):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            cmd = [sys.executable, __file__, "--run", args.run, "--variant", v, "--bucket", str(args.bucket),
                   "--passes", str(args.passes), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{v} failed:\n{out.stderr[-3000:]}")
            lines = out.stdout.splitlines()
            row = json.loads(next(ln for ln in lines if ln.startswith('{"variant"')))
            row["onednn_primitives_created_after_first_pass"] = sum("create:cache_miss" in ln for ln in lines)
            rows.append(row)
    print(json.dumps({"sizes": [f"{h}x{w}" for h, w in SIZES], "bucket": args.bucket, "threads": args.threads,
                      "cpu": platform.processor() or platform.machine(), "variants": rows,
                      "command": "python " + " ".join(sys.argv)}, indent=1))


if __name__ == "__main__":
    main()
