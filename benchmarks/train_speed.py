"""Training speed: images/s of one training step, ESeg against its peers, every mode, interleaved rounds.

    pip install -e '.[bench]'        # segmentation-models-pytorch for DeepLabV3+
    python benchmarks/train_speed.py --threads 2 --rounds 5 --settings 4x256,4x512

Models (19 classes, random weights): ESeg-Lite-S, ESeg-S, torchvision's LRASPP-MobileNetV3-Large and smp's
DeepLabV3+ (tu-efficientnet_b1, output stride 16). One step = forward at the crop size, cross-entropy on the
logits upsampled to the crop, backward, AdamW. Random images and labels: speed does not depend on them.

Modes:
- ``eager``: NCHW float32 and torch's default AdamW: the bare step a user writes first, the reference;
- ``channels_last``: NHWC activations and weights, fused AdamW (what ``eseg train`` does by default);
- ``bf16``: channels_last under bfloat16 autocast (the loss in float32), as ``eseg train --amp bf16``;
- ``compiled``: channels_last with forward + loss through ``torch.compile`` (``eseg train --compile``);
- ``compiled_bf16``: both.

``--trainer fp32,bf16`` adds cells of ``eseg train``'s own path for ESeg-Lite-S on the built-in synthetic set
with the synthetic recipe (its data pipeline, OHEM, logging) in float32 and in bf16 (or ``default``: the recipe's
own ``amp: auto``; ``compiled``),
timed over the same number of steps, so their ratio to the bare step is measured in the same run.

Each round times every cell once (``--steps`` steps, after the cells' warm-up, compilation included there and
reported separately) in a shuffled order, so that load from other processes hits all cells alike. Writes
``reports/benchmarks/train_speed.{json,md}`` with medians and maxima of images/s, the ESeg/peer ratios, and the
CPU model and flags.

``--malloc tuned`` (the default) sets glibc's malloc as ``eseg train`` does on CPU (``eseg_cli.inference.allocator``:
freed memory kept for reuse) before any cell is built, so every cell, the bare steps included, runs under it;
``--malloc default`` leaves glibc's defaults for every cell (``ESEG_MALLOC=default``, which the trainer cells obey).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

# oneDNN keeps 1024 compiled kernels (primitives) by default. A training run holds one model; this benchmark
# holds every cell's at once (forward, backward-data and backward-weights kernels per convolution and dtype),
# and past 1024 each cell recreated the kernels the others had evicted, every round: a cost no training run
# pays, and one that grows with a model's number of distinct convolutions (ESeg-S and DeepLabV3+ at 4x512 in
# eager, channels_last and bf16, 4 rounds: ESeg-S bf16 2.11 images/s under the default, 2.30 with room for all)
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eseg_cli.inference import allocator  # noqa: E402
from eseg_cli.inference.precision import autocast, cpu_bf16_support  # noqa: E402
from eseg_cli.inference.prepare import compile_training  # noqa: E402
from eseg_cli.models import build_model  # noqa: E402
from eseg_cli.utils import atomic_write_json, atomic_write_text, parse_size  # noqa: E402

MODES = ("eager", "channels_last", "bf16", "compiled", "compiled_bf16")
#: --models keys -> the names the tables use
MODELS = {"lite-s": "ESeg-Lite-S", "lraspp": "LRASPP-MobileNetV3-L", "s": "ESeg-S",
          "deeplabv3plus": "DeepLabV3+ (B1, OS16)"}
PAIRS = (("ESeg-Lite-S", "LRASPP-MobileNetV3-L"), ("ESeg-S", "DeepLabV3+ (B1, OS16)"))
NUM_CLASSES = 19
#: the --trainer cells: eseg train's defaults (the synthetic recipe's amp auto: bf16 on a CPU with AVX512-BF16
#: or AMX), and with --amp none / bf16 / --compile
TRAINER_MODES = {"default": {}, "fp32": {"amp": None}, "bf16": {"amp": "bf16"}, "compiled": {"compile": True}}


class FullRes(nn.Module):
    """Any of the models as ``x -> logits at the input size`` (LRASPP returns a dict)."""

    def __init__(self, model: nn.Module, key: str | None = None):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        out = self.model(x)
        return out[self.key] if self.key else out


def build(name: str) -> nn.Module:
    if name.startswith("ESeg"):
        return FullRes(build_model(name.lower(), num_classes=NUM_CLASSES))
    if name.startswith("LRASPP"):
        import torchvision

        return FullRes(torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES), key="out")
    import segmentation_models_pytorch as smp

    return FullRes(smp.DeepLabV3Plus(encoder_name="tu-efficientnet_b1", encoder_weights=None,
                                     encoder_output_stride=16, classes=NUM_CLASSES))


class StepCell:
    """One (model, setting, mode): a model of its own, its optimizer and a fixed random batch."""

    def __init__(self, name: str, batch: int, size: tuple[int, int], mode: str, seed: int, device: str = "cpu"):
        torch.manual_seed(seed)
        self.name, self.mode, self.batch, self.device = name, mode, batch, torch.device(device)
        self.setting = f"{batch}x{size[0]}x{size[1]}"
        model = build(name).train().to(self.device)
        cl = mode != "eager"
        if cl:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # the reference is the bare step a user writes (torch's default AdamW); the others use eseg's fused one
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({} if mode == "eager" else {"fused": True}))
        x = torch.randn(batch, 3, *size, device=self.device)
        self.x = x.contiguous(memory_format=torch.channels_last) if cl else x
        self.y = torch.randint(0, NUM_CLASSES, (batch, *size), device=self.device)
        amp = "bf16" if mode.endswith("bf16") else None

        def forward_loss(x, y):
            with autocast(self.device, amp):
                logits = self.model(x)
            return F.cross_entropy(logits.float(), y, ignore_index=255)

        self.forward_loss = compile_training(forward_loss) if mode.startswith("compiled") else forward_loss
        self.compile_s = None

    def step(self) -> None:
        loss = self.forward_loss(self.x, self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warm(self, n: int) -> None:
        t0 = time.perf_counter()
        self.step()  # compiles, for the compiled modes
        if self.mode.startswith("compiled"):
            self.compile_s = round(time.perf_counter() - t0, 1)
        for _ in range(n - 1):
            self.step()
        self.sync()

    def run(self, steps: int) -> float:
        """Images/s over ``steps`` steps."""
        self.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return steps * self.batch / (time.perf_counter() - t0)


class TrainerCell:
    """``eseg train``'s own step loop on the synthetic recipe (ESeg-Lite-S), as its log lines measure it."""

    def __init__(self, mode: str):
        from eseg_cli.engine import load_config
        from eseg_cli.engine.distributed import setup
        from eseg_cli.engine.trainer import Trainer
        from eseg_cli.events import Emitter
        from eseg_cli.run import Run

        self.cfg = load_config("synthetic", "lite-s", {"check_data": False, **TRAINER_MODES[mode]})
        self.name, self.mode, self.batch = "ESeg-Lite-S", f"trainer ({mode})", self.cfg.batch_size
        self.setting = f"{self.batch}x{self.cfg.crop_size[0]}x{self.cfg.crop_size[1]}"
        self._tmp = tempfile.TemporaryDirectory(prefix="eseg-train-speed-")
        self.trainer = Trainer(self.cfg, setup("cpu"), Run(self._tmp.name), Emitter(None, "train"))
        self.trainer.net.train()
        self.batches = self.trainer.batches(0)
        self.compile_s = None
        self.step_no = 0

    def warm(self, n: int) -> None:
        t0 = time.perf_counter()
        self.run(1)
        if self.cfg.compile:
            self.compile_s = round(time.perf_counter() - t0, 1)
        self.run(n - 1)

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        tr = self.trainer
        for _ in range(steps):
            tr._losses.append(tr.train_step(*next(self.batches)))
            self.step_no += 1
            if self.step_no % self.cfg.log_interval == 0:
                tr.log(self.step_no, t0, 0, t0)
        tr._interval_losses(self.step_no)  # the host sync a log line would make
        tr._losses.clear()
        return steps * self.batch / (time.perf_counter() - t0)


def cpu_description() -> dict:
    model = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = sorted({f for f in line.split(":", 1)[1].split()
                                if f.startswith(("avx512", "amx", "avx2", "fma", "avx_vnni"))})
                break
    except OSError:
        pass
    return {"model": model, "flags": flags, "bf16": cpu_bf16_support()}


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the GPU check: benchmarks/gpu_checks.sh)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per cell per round")
    ap.add_argument("--warmup", type=int, default=2, help="steps per cell before the rounds (compiling included)")
    ap.add_argument("--settings", default="4x256,4x512", help="BATCHxSIZE or BATCHxHxW, comma-separated")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--trainer", default="", metavar="MODES",
                    help="add eseg train's own loop (ESeg-Lite-S, synthetic recipe) in these modes, comma-separated: "
                         + ", ".join(TRAINER_MODES))
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--name", default="train_speed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                    help="glibc malloc for every cell: as eseg train sets it (tuned) or glibc's defaults")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # before any model (a Predictor tunes malloc for the whole process); records what holds (not glibc: default)
    args.malloc = "tuned" if allocator.choose(args.malloc) else "default"
    modes = [m for m in args.modes.split(",") if m]
    keys = [m for m in args.models.split(",") if m]
    bad = (set(modes) - set(MODES)) | (set(keys) - set(MODELS))
    if bad:
        raise SystemExit(f"unknown modes or models {sorted(bad)}; modes {MODES}, models {tuple(MODELS)}")
    models = [MODELS[k] for k in keys]
    cells = []
    for setting in args.settings.split(","):
        batch, rest = setting.split("x", 1)
        size = parse_size(rest) if "x" in rest else (int(rest), int(rest))
        for name in models:
            for mode in modes:
                cells.append(StepCell(name, int(batch), size, mode, args.seed, args.device))
    for mode in [m for m in args.trainer.split(",") if m]:
        if mode not in TRAINER_MODES:
            raise SystemExit(f"unknown trainer mode {mode!r}; choose from {', '.join(TRAINER_MODES)}")
        cells.append(TrainerCell(mode))
    for c in cells:
        t0 = time.perf_counter()
        c.warm(args.warmup)
        c.times = []
        print(f"warmed {c.name} {c.setting} {c.mode} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    rng = random.Random(args.seed)
    for r in range(args.rounds):
        for c in rng.sample(cells, len(cells)):
            c.times.append(c.run(args.steps))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    write_report(cells, args, modes)


def write_report(cells, args, modes) -> None:
    rows = [{"model": c.name, "setting": c.setting, "mode": c.mode, "median_images_per_s": round(
        statistics.median(c.times), 2), "max_images_per_s": round(max(c.times), 2),
        "images_per_s": [round(t, 2) for t in c.times], "compile_s": c.compile_s} for c in cells]
    index = {(r["model"], r["setting"], r["mode"]): r for r in rows}
    for r in rows:  # speed-up over the bare eager step of the same model and setting
        ref = index.get((r["model"], r["setting"], "eager"))
        r["speedup_vs_eager"] = round(r["median_images_per_s"] / ref["median_images_per_s"], 3) if ref else None
    pairs = []
    for eseg, peer in PAIRS:
        for setting in dict.fromkeys(r["setting"] for r in rows):
            for mode in [*modes, "best"]:
                mine, theirs = ([r for r in rows if r["model"] == m and r["setting"] == setting
                                 and r["mode"] in (modes if mode == "best" else [mode])] for m in (eseg, peer))
                if not mine or not theirs:
                    continue
                a = max(mine, key=lambda r: r["median_images_per_s"])
                b = max(theirs, key=lambda r: r["median_images_per_s"])
                a_max = max(mine, key=lambda r: r["max_images_per_s"])
                b_max = max(theirs, key=lambda r: r["max_images_per_s"])
                pairs.append({"eseg": eseg, "peer": peer, "setting": setting, "mode": mode,
                              "eseg_mode": a["mode"], "peer_mode": b["mode"],
                              "ratio": round(a["median_images_per_s"] / b["median_images_per_s"], 3),
                              "ratio_of_maxima": round(a_max["max_images_per_s"] / b_max["max_images_per_s"], 3)})
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "cpu": cpu_description(), "device": _device_name(args.device), "threads": args.threads,
            "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "malloc": args.malloc,
            "onednn_primitive_cache_capacity": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
            "command": "python " + " ".join(sys.argv),
            "notes": "images/s of whole training steps (forward, CE, backward, AdamW); ratio = ESeg images/s / "
                     "peer images/s (higher is better for ESeg); the trainer cell is eseg train's own loop"}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", {"meta": meta, "rows": rows, "pairs": pairs})
    text = markdown(rows, pairs, meta, modes)
    atomic_write_text(out / f"{args.name}.md", text)
    print(text)


def markdown(rows, pairs, meta, modes) -> str:
    cpu = meta["cpu"]
    where = meta["device"] if meta.get("device", "cpu") != "cpu" else f"{cpu['model']}, {meta['threads']} threads"
    lines = [f"# Training speed — {where}, torch {meta['torch']}", "",
             f"CPU flags: {' '.join(cpu['flags']) or 'n/a'}. Measured {meta['date']}: `{meta['command']}` "
             f"({meta['rounds']} interleaved rounds of {meta['steps']} steps per cell; malloc "
             f"{meta.get('malloc', 'default')} for every cell).", "",
             "Median images/s (max in brackets; × = speed-up over the same model's bare eager step):", ""]
    all_modes = [*modes, *dict.fromkeys(r["mode"] for r in rows if r["mode"].startswith("trainer"))]
    lines += ["| model | setting | " + " | ".join(all_modes) + " |", "|---|---|" + "---|" * len(all_modes)]
    for model in dict.fromkeys(r["model"] for r in rows):
        for setting in dict.fromkeys(r["setting"] for r in rows if r["model"] == model):
            cells = []
            for mode in all_modes:
                r = next((r for r in rows if (r["model"], r["setting"], r["mode"]) == (model, setting, mode)), None)
                cells.append("" if r is None else f"{r['median_images_per_s']:.1f} ({r['max_images_per_s']:.1f})"
                             + (f" {r['speedup_vs_eager']:.2f}×" if r["speedup_vs_eager"] and mode != "eager"
                                else ""))
            lines.append(f"| {model} | {setting} | " + " | ".join(cells) + " |")
    compiled = [r for r in rows if r["compile_s"] is not None]
    if compiled:
        lines += ["", "Compile time (the first step): " + ", ".join(
            f"{r['model']} {r['setting']} {r['mode']} {r['compile_s']:.0f} s" for r in compiled) + "."]
    lines += ["", "ESeg / peer, images/s (higher is better for ESeg); `best` is best mode against best mode:", "",
              "| pair | setting | mode | ratio of medians | ratio of maxima |", "|---|---|---|---|---|"]
    for p in pairs:
        mode = p["mode"] if p["mode"] != "best" else f"best ({p['eseg_mode']} vs {p['peer_mode']})"
        lines.append(f"| {p['eseg']} / {p['peer']} | {p['setting']} | {mode} | {p['ratio']:.2f} | "
                     f"{p['ratio_of_maxima']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
