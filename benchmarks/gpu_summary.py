"""Summarise a benchmarks/gpu_checks.sh output folder: a table of every check, and ``gpu_speed.json``.

    python benchmarks/gpu_summary.py OUT_DIR

``gpu_speed.json``: ``{"meta": {...}, "rows": [eseg profile --json rows], "fps_best_e2e": [{model, resolution,
mode, fps, device}]}``, each model's fastest row in ``fps_best_e2e`` (what Figure 4's measured panel reads).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    rows, best = [], {}
    for f in sorted(out.glob("*.json")):
        if f.name == "gpu_speed.json":
            continue
        try:
            d = json.loads(f.read_text() or "null")
        except ValueError:
            print(f"{f.stem:28s} (no JSON)")
            continue
        if isinstance(d, dict) and "latency_ms" in d:
            d["check"] = f.stem
            rows.append(d)
            print(f"{f.stem:28s} {d['latency_ms']:8.2f} ms  {d['fps']:7.1f} img/s  peak {d['peak_memory_mb']:.0f} MB"
                  f"  {d['device']}")
            if d["model"] not in best or d["fps"] > best[d["model"]]["fps"]:
                best[d["model"]] = d
        elif isinstance(d, dict):
            print(f"{f.stem:28s} {({k: d[k] for k in ('best_mIoU', 'mIoU', 'steps', 'seconds') if k in d})}")
    gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").is_file() else ""

    def mode(r):
        amp = r.get("amp", "fp32")  # eseg profile --json records it
        return f"{amp} + compile" if r.get("compile") else amp

    fig4 = [{"model": m, "resolution": r.get("latency_resolution") or r.get("resolution"), "mode": mode(r),
             "fps": round(r["fps"], 1), "device": r["device"]} for m, r in best.items()]
    meta = {"script": "benchmarks/gpu_checks.sh", "gpu": gpu, "batch": 1,
            "what": "eseg profile: the prepared model (BN folded, fusion weights frozen, channels_last) from a "
                    "normalised CUDA tensor to the label map at the input size (exact fast upsample+argmax), median "
                    "of the timed runs after warm-up, CUDA synchronised"}
    (out / "gpu_speed.json").write_text(json.dumps({"meta": meta, "rows": rows, "fps_best_e2e": fig4}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
