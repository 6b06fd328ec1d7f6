"""Where an int8 model's error comes from, at one input size: compiler or quantisation, clipping, and which part
of the graph.

    python benchmarks/int8_error.py --run runs/eseg-s-synthetic --resolution 1024x2048 --images 2

For each of ``--images`` synthetic val images resized to ``--resolution``, against the float model with int8's own
head sum (so that only quantisation differs; pixels whose argmax class is the same):

- ``compiled``: the int8 model as ``Predictor(quantize="int8")`` runs it (inductor, oneDNN int8 convolutions);
- ``converted, eager``: the same converted pt2e graph run by PyTorch, quantize/dequantize simulated in float: equal
  to ``compiled`` up to rounding unless the compiler changes the result;
- ``weights only``: that graph with every activation quantizer bypassed (int8 weights, float activations);
- ``first k activation quantizers``: only the first k (in graph order) applied, for k in ``--steps``: where the
  error builds up;
- the values the activation quantizers clip (outside their int8 range), in all and at the one that clips most.

Calibration as the Predictor's: ``--calibrate`` training images of the run's dataset, resized to the size. Prints
a table; writes nothing.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eseg_cli.engine.evaluator import eval_dataset  # noqa: E402
from eseg_cli.inference import Predictor  # noqa: E402
from eseg_cli.inference.int8 import run_calibration_images  # noqa: E402
from eseg_cli.utils import parse_size  # noqa: E402


@functools.cache
def ops():
    """pt2e's per-tensor quantize and dequantize ops (registered once torchao's pt2e is imported)."""
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401

    q = torch.ops.quantized_decomposed
    return q.quantize_per_tensor.default, q.dequantize_per_tensor.default


class Partial(torch.fx.Interpreter):
    """Runs a converted graph with only the activation quantizers named in ``on`` applied (the others pass their
    float input through their dequantize), recording the share of values each applied quantizer clips."""

    def __init__(self, gm: torch.fx.GraphModule, on: set[str]):
        super().__init__(gm)
        self.on, self.clipped = on, {}

    def run_node(self, n):
        quantize, dequantize = ops()
        if n.op == "call_function" and n.target == quantize:
            x, scale, zero, low, high = (self.env[a] if isinstance(a, torch.fx.Node) else a for a in n.args[:5])
            if n.name not in self.on:
                return ("float", x)
            v = x / scale + zero
            self.clipped[n.name] = (int(((v < low - 0.5) | (v > high + 0.5)).sum()), x.numel())
        if n.op == "call_function" and n.target == dequantize and isinstance(self.env[n.args[0]], tuple):
            return self.env[n.args[0]][1]
        return super().run_node(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "eseg-s-synthetic"))
    ap.add_argument("--resolution", default="1024x2048")
    ap.add_argument("--images", type=int, default=2, help="val images (resized to --resolution)")
    ap.add_argument("--calibrate", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25, help="k goes up in steps of this many quantizers")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = parse_size(args.resolution)
    fp32 = Predictor(args.run, device="cpu")
    q = Predictor(args.run, device="cpu", quantize="int8",
                  calibrate=run_calibration_images(fp32.checkpoint, args.calibrate), int8_min_agreement=0)
    int8 = q.model.int8
    reference = Predictor(args.run, device="cpu", head=q.head).model.forward_logits  # float, int8's head sum
    gm = int8.graph(size)
    names = [n.name for n in gm.graph.nodes if n.op == "call_function" and n.target == ops()[0]]
    val = eval_dataset("synthetic", None, "val")
    rows: dict[str, list[float]] = {}
    clipped: dict[str, tuple[int, int]] = {}  # quantizer -> (values clipped, values), all applied at once
    for i in range(args.images):
        image = F.interpolate(val[i][0][None].float(), size=size, mode="bilinear", align_corners=False)
        x = fp32.to_tensor(image.round().clamp(0, 255).to(torch.uint8))
        with torch.no_grad():
            ref = reference(x).argmax(1)

            def agree(logits, ref=ref):
                return float((logits.argmax(1) == ref).float().mean())

            rows.setdefault("compiled", []).append(agree(int8(x)))
            rows.setdefault("converted, eager", []).append(agree(gm(x)))
            for k in [0, *range(args.steps, len(names), args.steps), len(names)]:
                run = Partial(gm, set(names[:k]))
                label = "weights only" if k == 0 else f"first {k} of {len(names)} activation quantizers"
                rows.setdefault(label, []).append(agree(run.run(x)))
            for name, (n, total) in run.clipped.items():  # the last run: every quantizer applied
                c = clipped.get(name, (0, 0))
                clipped[name] = (c[0] + n, c[1] + total)
    print(f"{args.run} at {args.resolution}, {args.images} val images: pixels whose class equals the float model's "
          "(with int8's head sum)")
    print("| graph | " + " | ".join(f"image {i}" for i in range(args.images)) + " |")
    print("|---|" + "---|" * args.images)
    for label, values in rows.items():
        print(f"| {label} | " + " | ".join(f"{100 * v:.2f}%" for v in values) + " |")
    n, total = (sum(v[i] for v in clipped.values()) for i in (0, 1))
    worst = max(clipped, key=lambda k: clipped[k][0] / clipped[k][1])
    print(f"values clipped by the activation quantizers: {n} of {total} ({100 * n / total:.5f}%); the most, "
          f"{worst}: {clipped[worst][0]} of {clipped[worst][1]} ({100 * clipped[worst][0] / clipped[worst][1]:.3f}%)")


if __name__ == "__main__":
    main()
