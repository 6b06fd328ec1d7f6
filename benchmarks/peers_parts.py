"""Where ESeg's and its peer's time goes, part by part, and what that leaves of the ESeg / peer speed target.

    python benchmarks/peers_parts.py --threads 2 --rounds 9            # ESeg-S against DeepLabV3+ (B1, OS16)

Each network of a pair (``benchmarks/peers.py``'s models, random weights) is timed as three prefixes on a
normalised channels_last batch at ``--resolution``: its encoder; its encoder and decoder; the whole network (to
its logits at its own output stride, as ``peers.py``'s ``model`` kind). Two modes: ``compiled`` (exact float32,
``prepare_model(compile=True)``) and ``bf16`` (the same under bfloat16 autocast; ESeg's head summed coarse to
fine, ``--bf16-head``). Every cell is prepared once and timed in interleaved, shuffled rounds, one process.

The decoder's cost is (encoder + decoder) - encoder, the head's is the network - (encoder + decoder), from
medians. The report then asks the target's question the other way round: with ESeg's encoder as measured, how
much may ESeg's decoder and head cost for ESeg / peer <= the target (``peers.py``'s ``TARGETS``), against the
peer's whole network in the same mode? End to end, both models add the same normalisation and post-processing,
which only moves the ratio towards 1.

A ``copy`` cell gives what one pass over a map of the finest decoder level costs in memory traffic: a bf16 clone
of ``channels`` x H/4 x W/4 (read and write), the unit in which ESeg's P2 nodes spend their time.

Writes ``reports/benchmarks/peers_parts.{json,md}`` (``--name`` changes the stem).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")  # as peers.py: room for every cell's kernels
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from peers import TARGETS, build_pairs, cpu_description, make_variant  # noqa: E402

from eseg_cli.inference import allocator  # noqa: E402
from eseg_cli.utils import atomic_write_json, atomic_write_text, parse_size  # noqa: E402

PARTS = ("encoder", "encoder+decoder", "network")
MODES = ("compiled", "bf16")


def stages(model: nn.Module) -> list[nn.Module]:
    """The encoder, decoder and head of a ``peers.LowRes`` model, in the order its forward runs them."""
    m = model.model
    if model.kind == "eseg":
        return [m.encoder, m.decoder, m.head]
    if model.kind == "smp":
        return [m.encoder, m.decoder, m.segmentation_head]
    return [m.backbone, m.classifier]  # LRASPP: its classifier is its decoder and head in one


class Prefix(nn.Module):
    """The first ``k`` stages of a network, run in sequence; ``kind`` as the ``peers.LowRes`` it comes from (so
    that ``peers.make_variant`` prepares it as it prepares that model: an ESeg head summed as ``--bf16-head`` says)."""

    def __init__(self, parts: list[nn.Module], kind: str):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.kind = kind

    def forward(self, x):
        for p in self.parts:
            x = p(x)
        return x


def prefixes(model: nn.Module) -> dict[str, Prefix]:
    """``{part: prefix}`` of a ``peers.LowRes`` ``model``."""
    s = stages(model)
    cuts = {"encoder": 1, "encoder+decoder": 2, "network": len(s)} if len(s) == 3 else {"encoder": 1, "network": 2}
    return {part: Prefix(s[:k], model.kind) for part, k in cuts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--resolution", default="1024x2048")
    ap.add_argument("--pairs", default="S", help="S (ESeg-S vs DeepLabV3+), Lite-S (vs LRASPP), comma-separated")
    ap.add_argument("--bf16-head", choices=("exact", "coarse-to-fine"), default="coarse-to-fine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--name", default="peers_parts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    malloc = "tuned" if allocator.choose("tuned") else "default"
    res = parse_size(args.resolution)
    x = torch.randn(1, 3, *res, generator=torch.Generator().manual_seed(args.seed)).contiguous(
        memory_format=torch.channels_last)
    wanted = set(args.pairs.split(","))
    cells, channels = [], 0
    with torch.inference_mode():
        for pair, name, model in build_pairs():
            if pair not in wanted:
                continue
            if model.kind == "eseg":
                channels = max(channels, model.model.decoder.out_channels)
            for mode in MODES:
                for part, prefix in prefixes(model).items():
                    t0 = time.perf_counter()
                    variant, _ = make_variant(prefix, mode, res, args.threads, args.bf16_head)  # peers.py's modes

                    def fn(variant=variant):
                        return variant(x)

                    fn(), fn()  # compiles, then warms oneDNN's kernels
                    print(f"prepared {name} {mode} {part} in {time.perf_counter() - t0:.1f}s", file=sys.stderr,
                          flush=True)
                    cells.append({"pair": pair, "model": name, "mode": mode, "part": part, "fn": fn, "times_ms": []})
        p2 = torch.randn(1, channels, res[0] // 4, res[1] // 4).to(torch.bfloat16).contiguous(
            memory_format=torch.channels_last)
        cells.append({"pair": "", "model": f"copy of a bf16 {channels}x{res[0] // 4}x{res[1] // 4} map", "mode": "bf16",
                      "part": "copy", "fn": lambda: p2.clone(), "times_ms": [], "bytes": 2 * p2.numel() * 2})
        rng = random.Random(args.seed)
        for r in range(args.rounds):
            for c in rng.sample(cells, len(cells)):
                t0 = time.perf_counter()
                c["fn"]()
                c["times_ms"].append((time.perf_counter() - t0) * 1000)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    write_report(cells, args, malloc)


def write_report(cells, args, malloc: str) -> None:
    """``{meta, rows: [{pair, model, mode, part, median_ms, min_ms, times_ms}], split: [{pair, model, mode,
    encoder_ms, decoder_ms, head_ms, network_ms}], bound: [{pair, mode, target, ratio, peer_network_ms,
    eseg_encoder_ms, eseg_rest_ms, rest_allowed_ms}], copy: {...}}``; all from medians."""
    rows = [{k: c[k] for k in ("pair", "model", "mode", "part")}
            | {"median_ms": round(statistics.median(c["times_ms"]), 2), "min_ms": round(min(c["times_ms"]), 2),
               "times_ms": [round(t, 2) for t in c["times_ms"]]} | ({"bytes": c["bytes"]} if "bytes" in c else {})
            for c in cells]
    copy_row = next((r for r in rows if r["part"] == "copy"), None)
    if copy_row:
        copy_row["GB_per_s"] = round(copy_row["bytes"] / copy_row["median_ms"] / 1e6, 1)
    med = {(r["model"], r["mode"], r["part"]): r["median_ms"] for r in rows}
    split = []
    for model, pair in dict.fromkeys((r["model"], r["pair"]) for r in rows if r["part"] != "copy"):
        for mode in MODES:
            enc, net = med.get((model, mode, "encoder")), med.get((model, mode, "network"))
            if enc is None or net is None:
                continue
            dec = med.get((model, mode, "encoder+decoder"))
            split.append({"pair": pair, "model": model, "mode": mode, "encoder_ms": enc,
                          "decoder_ms": round(dec - enc, 2) if dec is not None else None,
                          "head_ms": round(net - dec, 2) if dec is not None else round(net - enc, 2),
                          "network_ms": net})
    bound = []
    for pair, target in TARGETS.items():
        for mode in MODES:
            mine = [s for s in split if s["pair"] == pair and s["mode"] == mode and s["model"].startswith("ESeg")]
            theirs = [s for s in split if s["pair"] == pair and s["mode"] == mode and not s["model"].startswith("ESeg")]
            if not mine or not theirs:
                continue
            a, b = mine[0], theirs[0]
            bound.append({"pair": pair, "mode": mode, "target": target, "eseg": a["model"], "peer": b["model"],
                          "ratio": round(a["network_ms"] / b["network_ms"], 3),
                          "encoder_ratio": round(a["encoder_ms"] / b["encoder_ms"], 3),
                          "peer_network_ms": b["network_ms"], "eseg_encoder_ms": a["encoder_ms"],
                          "eseg_rest_ms": round(a["network_ms"] - a["encoder_ms"], 2),
                          "peer_rest_ms": round(b["network_ms"] - b["encoder_ms"], 2),
                          "rest_allowed_ms": round(target * b["network_ms"] - a["encoder_ms"], 2)})
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "cpu": cpu_description(), "threads": args.threads, "rounds": args.rounds, "resolution": args.resolution,
            "bf16_head": args.bf16_head, "malloc": malloc, "weights": "random", "batch": 1,
            "command": "python " + " ".join(sys.argv),
            "notes": "model-only (normalised channels_last batch to logits at the output stride); parts from "
                     "medians of interleaved rounds; rest = decoder + head"}
    out = Path(args.out)
    report = {"meta": meta, "rows": rows, "split": split, "bound": bound, "copy": copy_row}
    atomic_write_json(out / f"{args.name}.json", report)
    text = markdown(report)
    atomic_write_text(out / f"{args.name}.md", text)
    print(text)


def markdown(report: dict) -> str:
    meta = report["meta"]
    cpu = meta["cpu"]
    lines = [f"# Where the time goes, part by part — {meta['resolution']}, {meta['threads']} threads, "
             f"torch {meta['torch']}, median of {meta['rounds']} interleaved rounds, batch 1, random weights", "",
             f"CPU: {cpu['name']} ({cpu['cores']} cores; {', '.join(cpu['flags'])})", "",
             f"`{meta['command']}` ({meta['date']})", "",
             "| model | mode | encoder ms | decoder ms | head ms | network ms |", "|---|---|---|---|---|---|"]
    for s in report["split"]:
        dec = "" if s["decoder_ms"] is None else s["decoder_ms"]
        lines.append(f"| {s['model']} | {s['mode']} | {s['encoder_ms']} | {dec} | {s['head_ms']} | {s['network_ms']} |")
    lines += ["", "| pair | mode | ESeg / peer | encoders' ratio | ESeg's decoder + head ms | the peer's ms | "
                  "ESeg's decoder + head may cost, for the target |", "|---|---|---|---|---|---|---|"]
    for b in report["bound"]:
        lines.append(f"| {b['eseg']} / {b['peer']} | {b['mode']} | {b['ratio']} | {b['encoder_ratio']} | "
                     f"{b['eseg_rest_ms']} | {b['peer_rest_ms']} | <= {b['rest_allowed_ms']} "
                     f"(ratio <= {b['target']}) |")
    c = report.get("copy")
    if c:
        lines += ["", f"One pass over the finest decoder level: {c['model']}, {c['median_ms']} ms "
                      f"({c['GB_per_s']} GB/s read + write)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
