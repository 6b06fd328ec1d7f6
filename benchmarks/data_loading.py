"""Training-pipeline loading speed (images/s) with N DataLoader workers, at the crop of the dataset's recipe.

    python benchmarks/data_loading.py                       # default synthetic set, its recipe's crop and workers
    python benchmarks/data_loading.py --full-res            # Cityscapes-sized 1024x2048 PNGs, crop 512x1024
    python benchmarks/data_loading.py --dataset cityscapes --root data/cityscapes --workers 4

The pipeline is the recipe's train transform (random scale in its scale_range, pad, random crop, flip, colour
jitter, normalize), over the training set preloaded as ``eseg train`` does when it fits the recipe's
``preload_mb`` (``--no-preload`` reads the files every time). ``--full-res`` generates a small synthetic set at
Cityscapes resolution in a temporary folder, so the cost of decoding full-size frames is measured without the
real dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from eseg_cli.data import build_dataset, build_transforms
from eseg_cli.data.benchmark import loading_throughput
from eseg_cli.engine import load_config
from eseg_cli.engine.trainer import preload_training_set
from eseg_cli.utils import parse_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--root", default=None, help="dataset root (synthetic: the default set if omitted)")
    ap.add_argument("--crop", default=None, help="HxW (default: the crop of the dataset's recipe)")
    ap.add_argument("--workers", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--no-preload", action="store_true", help="read every sample from its files")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--full-res", action="store_true", help="synthetic frames at 1024x2048, crop 512x1024")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    recipe = load_config(args.dataset)  # the dataset's training crop and scale range
    root, crop = args.root, parse_size(args.crop) if args.crop else tuple(recipe.crop_size)
    tmp = None
    if args.full_res:
        from eseg_cli.data.synthetic import generate

        tmp = tempfile.TemporaryDirectory(prefix="eseg-bench-")
        generate(tmp.name, num_train=24, num_val=0, size=(1024, 2048), seed=0, workers=args.workers or 2)
        root, crop = tmp.name, (parse_size(args.crop) if args.crop else (512, 1024))
    tf = build_transforms(True, crop_size=crop, scale_range=tuple(recipe.scale_range))
    ds = build_dataset(args.dataset, root, "train", tf)
    workers = recipe.workers if args.workers is None else args.workers
    preload_training_set(ds, 0 if args.no_preload else recipe.preload_mb, lambda m: print(m, file=sys.stderr))
    res = loading_throughput(ds, batch_size=args.batch_size, workers=workers, batches=args.batches,
                             warmup=args.warmup)
    res.update(dataset=args.dataset, crop=list(crop), images=len(ds), preloaded=ds._decoded is not None,
               source_size=_size(ds.files[0][0]))
    if tmp:
        tmp.cleanup()
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{args.dataset}: {res['images_per_s']:.1f} images/s ({workers} workers, "
              f"{'preloaded' if res['preloaded'] else 'from disk'}, batch "
              f"{args.batch_size}, source {res['source_size'][0]}x{res['source_size'][1]}, crop {crop[0]}x{crop[1]})")


def _size(path) -> list[int]:
    from PIL import Image

    with Image.open(path) as im:
        return [im.height, im.width]


if __name__ == "__main__":
    main()
