#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one short script (about 6 minutes on one H100):
#   1. DDP through torchrun (nccl) with SyncBatchNorm and bf16 autocast, then `eseg eval` of that run;
#   2. fp16 autocast with the gradient scaler, one process;
#   3. inference speed at 1024x2048, batch 1, end to end from a normalised tensor to the label map
#      (`eseg profile`, the Predictor's path): ESeg-Lite-S fp32 / bf16 / bf16 + torch.compile, and
#      ESeg-Lite-M/L and ESeg-S with bf16 + compile;
#   4. training throughput at the paper's setting (512x1024 crops, batch 8, bf16 + torch.compile): ESeg-S and
#      ESeg-Lite-S beside smp's DeepLabV3+ (B1, OS16) (benchmarks/train_speed.py; needs segmentation-models-pytorch).
# Usage (from the repository root, eseg importable):  OUT=/tmp/eseg-gpu bash benchmarks/gpu_checks.sh
# Writes <check>.json and <check>.log under $OUT, and gpu_speed.json (the speed rows, with each model's best
# in fps_best_e2e for Figure 4: eseg report --profile), and prints a summary table last.
set -uo pipefail
OUT=${OUT:-/tmp/eseg-gpu}
mkdir -p "$OUT"
W=$(mktemp -d)
export PYTHONUNBUFFERED=1 ESEG_CACHE_DIR=$W/cache NO_ALBUMENTATIONS_UPDATE=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"

check() {  # check NAME SECONDS CMD...: run CMD, its JSON on stdout to $OUT/NAME.json, the rest to NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
  local rc=$?
  printf '%-22s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || tail -5 "$OUT/$name.log"
}
TRAIN=(train -s lite-s --steps 120 -b 8 --crop 256x256 --workers 4 --eval-interval 120 --log-interval 20
       --no-progress --yes --json)
check ddp_nccl_syncbn_bf16 240 torchrun --standalone --nproc_per_node=1 -m eseg_cli "${TRAIN[@]}" --amp bf16 -o "$W/ddp"
grep -h -E "SyncBatchNorm|nccl" "$OUT/ddp_nccl_syncbn_bf16.log" | head -3
check eval_ddp_run 120 $PY -m eseg_cli eval -c "$W/ddp" --device cuda --amp bf16 --yes --json
check train_fp16_scaler 180 $PY -m eseg_cli "${TRAIN[@]}" --amp fp16 -o "$W/fp16"
PROF=(profile -r 1024x2048 --no-flops --device cuda --runs 50 --warmup 10 --json)
check speed_lite-s_fp32 120 $PY -m eseg_cli "${PROF[@]}" -s lite-s
check speed_lite-s_bf16 120 $PY -m eseg_cli "${PROF[@]}" -s lite-s --amp bf16
for s in lite-s lite-m lite-l s; do
  check "speed_${s}_bf16_compile" 150 $PY -m eseg_cli "${PROF[@]}" -s "$s" --amp bf16 --compile
done
check train_speed_gpu 300 $PY benchmarks/train_speed.py --device cuda --settings 8x512x1024 --modes compiled_bf16 \
  --models s,lite-s,deeplabv3plus --rounds 3 --steps 5 --out "$OUT" --name train_speed_gpu
$PY benchmarks/gpu_summary.py "$OUT"
rm -rf "$W"
