"""Where a Trainer step's time goes: data, forward, loss, backward, optimizer, logging (torch.profiler).

    python benchmarks/train_profile.py                         # the synthetic recipe, ESeg-Lite-S, 40 steps
    python benchmarks/train_profile.py --set channels_last=false --set compile=true --steps 60

The Trainer is built by the library from the recipe (``--set key=value`` overrides, as ``eseg train --set``),
then driven step by step with each phase in a ``torch.profiler.record_function`` scope. The first ``--warmup``
steps (compilation, oneDNN kernel creation, worker start) are not profiled. Prints the share of each phase in
wall-clock time and the top operators by self CPU time; ``--json`` writes both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eseg_cli.engine import load_config  # noqa: E402
from eseg_cli.engine.distributed import setup  # noqa: E402
from eseg_cli.engine.trainer import Trainer  # noqa: E402
from eseg_cli.events import Emitter  # noqa: E402
from eseg_cli.run import Run  # noqa: E402

PHASES = ("data", "forward+loss", "backward", "optimizer", "log")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="lite-s")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value (YAML value)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--top", type=int, default=20, help="operators to list")
    ap.add_argument("--json", type=Path, default=None, help="write the tables here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.sets)}
    cfg = load_config(args.dataset, args.scale, {"check_data": False, **overrides})
    print(f"eseg_cli from {Path(sys.modules['eseg_cli'].__file__).parent}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="eseg-profile-") as tmp:
        trainer = Trainer(cfg, setup(cfg.device), Run(tmp), Emitter(None, "train", total=cfg.steps))
        batches = trainer.batches(0)
        trainer.net.train()
        # a Trainer from before these methods existed (the baseline, ed13474): the same steps written out
        forward_loss = getattr(trainer, "forward_loss", None) or (
            lambda i, t: trainer.criterion(trainer.net(i).float(), t))
        to_device = getattr(trainer, "to_device", None) or (
            lambda i, t: (i.contiguous(memory_format=torch.channels_last) if cfg.channels_last else i, t))
        for _ in range(args.warmup):
            trainer.train_step(*next(batches))
        wall = dict.fromkeys(PHASES, 0.0)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for step in range(args.steps):
                t = time.perf_counter()
                with record_function("data"):
                    image, target = to_device(*next(batches))
                t = _lap(wall, "data", t)
                with record_function("forward+loss"):
                    loss = forward_loss(image, target)
                t = _lap(wall, "forward+loss", t)
                with record_function("backward"):
                    trainer.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                t = _lap(wall, "backward", t)
                with record_function("optimizer"):
                    trainer.optimizer.step()
                    trainer.scheduler.step()
                t = _lap(wall, "optimizer", t)
                trainer._losses.append(loss.detach())
                with record_function("log"):
                    if (step + 1) % cfg.log_interval == 0:
                        trainer.log(step + 1, t, 0, t)
                _lap(wall, "log", t)
    total = sum(wall.values())
    images = args.steps * cfg.batch_size
    phases = [{"phase": k, "ms_per_step": round(1000 * v / args.steps, 1), "share": round(v / total, 3)}
              for k, v in wall.items()]
    ops = [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1000 / args.steps, 2),
            "calls_per_step": round(e.count / args.steps, 1)}
           for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
           if e.key not in PHASES][:args.top]
    cfg = trainer.cfg  # amp auto decided
    print(f"{cfg.scale}, batch {cfg.batch_size} x {cfg.crop_size[0]}x{cfg.crop_size[1]}, channels_last "
          f"{cfg.channels_last}, compile {getattr(cfg, 'compile', False)}, amp {cfg.amp}, loss {cfg.loss}, "
          f"{torch.get_num_threads()} threads: {images / total:.1f} images/s over {args.steps} steps")
    for p in phases:
        print(f"  {p['phase']:<13} {p['ms_per_step']:8.1f} ms/step  {100 * p['share']:5.1f}%")
    print("top operators (self CPU ms per step):")
    for o in ops:
        print(f"  {o['op']:<50} {o['self_ms_per_step']:8.2f}  x{o['calls_per_step']}")
    if args.json:
        args.json.write_text(json.dumps({"config": {k: getattr(cfg, k) for k in (
            "scale", "batch_size", "crop_size", "channels_last", "amp", "loss")}, "images_per_s": images / total,
            "phases": phases, "ops": ops}, indent=2))


def _lap(wall: dict, phase: str, t: float) -> float:
    now = time.perf_counter()
    wall[phase] += now - t
    return now


if __name__ == "__main__":
    main()
