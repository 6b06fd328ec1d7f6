"""Self-training on the synthetic set, end to end through the command line; writes reports/selftrain/.

    python benchmarks/selftrain.py                  # the committed numbers (see reports/selftrain/README.md)
    python benchmarks/selftrain.py --steps 100 --out /tmp/st   # a quick smoke run
    nox -s selftrain                                 # the same, in its own environment

1. ``labelled``: 100 training + 100 validation images (seed 0). ``unlabelled``: 400 more images (seed 1),
   whose labels only the oracle sees.
2. teacher: ESeg-Lite-S trained on the 100 labelled images.
3. ``eseg pseudo-label`` labels the 400 unlabelled images with the teacher (threshold 0.5: pixels whose top
   class probability is below it are ignored).
4. student: the same model and recipe on the union (labelled + pseudo-labelled; each epoch shows all 500
   images once: the extra source's ratio is 400/500).
5. oracle: the same on all 500 images with their true labels.

All three train for the same number of steps with the same seed, on one CPU thread each (teacher and
oracle run side by side). Reported: val mIoU on the 100 validation images at the last step and at each
validation, plus the pseudo-labels' coverage and accuracy against the true labels they replaced.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def eseg(*args: str, log: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "eseg_cli", *args]
    print("$ eseg " + " ".join(args), flush=True)
    out = open(log, "w") if log else None  # noqa: SIM115 - closed when the process is waited for
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None)


def wait(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.wait() != 0:
            sys.exit(f"a step failed (exit {p.returncode}): {' '.join(map(str, p.args))}")


def val_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines() if line.strip()]


def pseudo_label_quality(pl: Path, unlabelled: Path) -> dict:
    """Coverage (kept pixels) and accuracy of the kept pixels against the true labels."""
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-interval", type=int, default=375)
    ap.add_argument("--size", default="128x256", help="synthetic image size HxW")
    ap.add_argument("--crop", default="128x128")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--scale", default="lite-s")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "selftrain", help="data and run folders")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "selftrain", help="tables and JSON")
    a = ap.parse_args()
    t0 = time.time()
    work = a.work
    labelled, unlabelled, pl = work / "data" / "labelled", work / "data" / "unlabelled", work / "data" / "pseudo"
    work.mkdir(parents=True, exist_ok=True)
    wait(eseg("prepare-data", "synthetic", "--out", str(labelled), "--num-train", "100", "--num-val", "100",
              "--size", a.size, "--seed", "0", "--workers", "1", "--json", log=work / "prepare_labelled.log"))
    wait(eseg("prepare-data", "synthetic", "--out", str(unlabelled), "--num-train", "400", "--num-val", "0",
              "--size", a.size, "--seed", "1", "--workers", "1", "--json", log=work / "prepare_unlabelled.log"))
    common = ["train", "--scale", a.scale, "--dataset", "synthetic", "--data-root", str(labelled),
              "--steps", str(a.steps), "--crop", a.crop, "--eval-interval", str(a.eval_interval), "--workers", "0",
              "--threads", "1", "--seed", "0", "--no-progress", "--yes", "--json"]
    runs = {k: work / k for k in ("teacher", "student", "oracle")}
    for old in (*runs.values(), pl):  # fresh runs (the data folders are kept: generation is deterministic)
        shutil.rmtree(old, ignore_errors=True)
    ratio = 400 / 500
    teacher = eseg(*common, "--run-dir", str(runs["teacher"]), log=work / "teacher.log")
    oracle = eseg(*common, "--run-dir", str(runs["oracle"]), "--set",
                  f"extra_data=[{{dataset: synthetic, root: '{unlabelled}', ratio: {ratio}}}]", log=work / "oracle.log")
    wait(teacher)
    unl_images = unlabelled / "leftImg8bit" / "train"
    wait(eseg("pseudo-label", "--checkpoint", str(runs["teacher"] / "checkpoints" / "last.pt"), "--images",
              str(unl_images), "--out", str(pl), "--threshold", str(a.threshold), "--threads", "1", "--device", "cpu",
              "--no-progress", "--json", log=work / "pseudo_label.log"))
    student = eseg(*common, "--run-dir", str(runs["student"]), "--extra-data", str(pl), "--extra-ratio", str(ratio),
                   log=work / "student.log")
    wait(oracle, student)

    rows = {k: val_rows(r) for k, r in runs.items()}
    final = {k: r[-1]["mIoU"] for k, r in rows.items()}
    summary = json.loads((pl / "pseudo_label.json").read_text())["summary"]
    result = {
        "setup": {"scale": a.scale, "steps": a.steps, "crop": a.crop, "image_size": a.size, "threshold": a.threshold,
                  "labelled_train": 100, "unlabelled": 400, "val": 100, "extra_ratio": ratio, "threads": 1},
        "final_val_mIoU": final,
        "history": {k: [{"step": x["step"], "mIoU": x["mIoU"]} for x in r] for k, r in rows.items()},
        "pseudo_labels": {"kept_fraction_reported": summary["kept_fraction"],
                          **pseudo_label_quality(pl, unlabelled)},
        "student_minus_teacher": round(final["student"] - final["teacher"], 2),
        "oracle_minus_teacher": round(final["oracle"] - final["teacher"], 2),
        "minutes": round((time.time() - t0) / 60, 1),
        "command": "python benchmarks/selftrain.py " + " ".join(sys.argv[1:]),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    steps = [x["step"] for x in rows["teacher"]]
    lines = ["| model | trained on | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|---|" + "---:|" * len(steps)]
    what = {"teacher": "100 labelled", "student": "100 labelled + 400 pseudo-labelled",
            "oracle": "100 labelled + 400 with true labels"}
    for k in ("teacher", "student", "oracle"):
        by_step = {x["step"]: x["mIoU"] for x in rows[k]}
        lines.append(f"| {k} | {what[k]} | " + " | ".join(f"{by_step.get(s, float('nan')):.2f}" for s in steps) + " |")
    gain = result["student_minus_teacher"]
    verdict = (f"Self-training {'helped' if gain > 0 else 'did not help'}: the student ends {abs(gain):.2f} mIoU "
               f"{'above' if gain > 0 else 'below'} its teacher; the oracle (true labels on the same 500 images) "
               f"ends {result['oracle_minus_teacher']:+.2f} from the teacher.")
    pq = result["pseudo_labels"]
    text = "\n".join([
        "# Self-training on the synthetic set",
        "",
        f"Val mIoU (%) on 100 validation images; {a.scale}, {a.steps} steps, crop {a.crop}, images {a.size}, "
        "one CPU thread per run, same seed for all three.",
        "",
        *lines,
        "",
        verdict,
        "",
        f"Pseudo-labels (threshold {a.threshold}): {100 * pq['kept_fraction']:.1f}% of the labelled pixels kept, "
        f"{100 * pq['kept_accuracy']:.1f}% of the kept ones agree with the true label.",
        "",
        f"Regenerate: `{result['command'].strip()}` (or `nox -s selftrain`), {result['minutes']} min here. "
        "Raw numbers: results.json.",
        "",
    ])
    (a.out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
