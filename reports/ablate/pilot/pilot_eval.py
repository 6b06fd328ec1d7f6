"""Post-hoc evaluation of the protocol-v1 pilot's final checkpoints (reports/ablate/PROTOCOL.md, section 5).

Every pilot run trained with weight EMA (decay 0.995), which does not change the raw weights' trajectory, on a
synthetic set with 400 validation images whose first 100 are the default set's. Each final checkpoint (last.pt)
is evaluated four ways: raw or EMA weights, on the first 100 or all 400 validation images (whole images, fp32).
Writes pilot_eval.json beside this file; finished entries are kept.

    PYTHONPATH=. python reports/ablate/pilot/pilot_eval.py /work/runs/pilot
"""

import json
import sys
from pathlib import Path

import torch

from eseg_cli.engine.evaluator import evaluate

torch.set_num_threads(2)
root = Path(sys.argv[1])
out = Path(__file__).with_name("pilot_eval.json")
done = json.loads(out.read_text()) if out.is_file() else {}
for results in sorted(root.glob("*/levels/results.jsonl")):
    arm = results.parent.parent.name  # bn / gn
    for row in map(json.loads, results.read_text().splitlines()):
        key = f"{arm}/{row['cell']}/s{row['seed']}"
        if key in done:
            continue
        ckpt = Path(row["run_dir"]) / "checkpoints" / "last.pt"
        entry = {"arm": arm, "cell": row["cell"], "seed": row["seed"], "train_final_miou": row["final_miou"],
                 "train_prev_miou": row["prev_miou"], "seconds": row["seconds"]}
        for weights, use_ema in (("ema", True), ("raw", False)):
            for n in (100, 400):
                m = evaluate(ckpt, use_ema=use_ema, max_images=n, workers=0, device="cpu", out_dir=Path("/tmp/pe"))
                entry[f"{weights}_val{n}"] = round(m["mIoU"], 2)
        done[key] = entry
        out.write_text(json.dumps(done, indent=1) + "\n")
        print(key, entry, flush=True)
