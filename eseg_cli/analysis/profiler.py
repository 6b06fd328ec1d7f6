"""Parameters, FLOPs (fvcore, multiply-adds), latency and peak memory of a model."""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import threading
import time
import warnings

import torch

# fvcore scripts functions with torch.jit when imported and traces through it on every count; recent torch warns
# on both (a third party's deprecation, nothing a user of eseg can act on)
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)

from fvcore.nn import FlopCountAnalysis  # noqa: E402
from torch import nn  # noqa: E402

from eseg_cli.errors import EsegError  # noqa: E402
from eseg_cli.inference import precision  # noqa: E402
from eseg_cli.inference.fold import fold_batchnorm  # noqa: E402
from eseg_cli.inference.predictor import Predictor  # noqa: E402
from eseg_cli.models import build_model  # noqa: E402
from eseg_cli.utils import check_size  # noqa: E402

# Ops that cost no multiply-adds; fvcore lists them as skipped, which would only be noise.
_FREE_OPS = {"aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::relu", "aten::relu_", "aten::silu",
             "aten::silu_", "aten::max_pool2d", "aten::avg_pool2d", "aten::softmax", "aten::sum", "aten::div",
             "aten::stack", "aten::sigmoid", "aten::hardtanh_", "aten::adaptive_avg_pool2d"}


def count_params(model: nn.Module) -> dict[str, int]:
    """Trainable parameters, and the same plus BN running statistics (Keras' "total params")."""
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    return {"params": params, "params_with_bn_stats": params + stats}


def count_flops(model: nn.Module, resolution: tuple[int, int], batch: int = 1) -> dict:
    """FLOPs with fvcore, where one FLOP is one multiply-add.

    Returns ``flops`` (fvcore's total: convs, batch norm and upsampling), ``flops_conv`` (convolutions
    only, closest to how the paper counted), ``by_operator`` and ``skipped_ops`` (ops fvcore has no
    formula for, with their call counts, after leaving out element-wise ops that cost no multiply-adds).
    """
    model = model.eval()
    check_size(resolution, "resolution")
    x = torch.zeros(batch, 3, *resolution, device=next(model.parameters()).device)
    with torch.no_grad():
        fca = FlopCountAnalysis(model, (x,))
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        total = fca.total()
        by_op = dict(fca.by_operator())
        skipped = {k: v for k, v in fca.unsupported_ops().items() if k not in _FREE_OPS}
    return {"flops": int(total), "flops_conv": int(by_op.get("conv", 0)), "by_operator": by_op, "skipped_ops": skipped}


class _PeakRSS:
    """Samples this process's resident memory (Linux) on a thread: CPU peak memory during a block."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())


def measure_latency(model: nn.Module, resolution: tuple[int, int], *, runs: int = 10, warmup: int = 3,
                    device: str = "cpu", threads: int | None = None, channels_last: bool = False,
                    compile: bool = False, amp: str | None = None, fuse_bn: bool = False,
                    eager: bool = False) -> dict:
    """Median latency (ms) of ``runs`` timed batch-1 passes after ``warmup`` ones, in eval and inference
    mode, plus the peak memory during them (CUDA allocator peak, or process RSS on CPU).

    By default the inference path is timed, as :class:`~eseg_cli.inference.Predictor` runs it: the prepared
    model (batch norm folded, fusion weights frozen, channels_last where faster; ``compile`` optional) from a
    normalised batch to the label map at the input size (exact fast upsampling + argmax). ``eager=True``
    times ``model(x)`` as built instead (logits at the input size), where ``channels_last`` and ``fuse_bn``
    apply one step each, for comparison.
    """
    if runs < 1 or warmup < 0:
        raise EsegError(f"runs must be >= 1 and warmup >= 0, got {runs} and {warmup}")
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EsegError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EsegError("'device' is cuda but no CUDA GPU is available", field="device")
    check_size(resolution, "resolution")
    x = torch.randn(1, 3, *resolution, device=dev)
    if eager:
        model = model.eval().to(dev)
        if fuse_bn:
            model = copy.deepcopy(model)
            fold_batchnorm(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        fn = torch.compile(model) if compile else model
        autocast = precision.autocast(dev, amp)
    else:  # the Predictor's own path: autocast around the network only, exact post-processing in fp32
        predictor = Predictor(model, device=dev, compile=compile, amp=amp)
        channels_last, fuse_bn = predictor.channels_last, True
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fn, autocast = predictor.labels, contextlib.nullcontext()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            fn(x)
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with _PeakRSS() as mem:
            for _ in range(runs):
                t0 = time.perf_counter()
                fn(x)
                sync()
                times.append((time.perf_counter() - t0) * 1000)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else mem.peak
    return {
        "latency_ms": statistics.median(times),
        "latency_ms_min": min(times),
        "fps": 1000.0 / statistics.median(times),
        "runs": runs,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "device": _device_name(dev),
        "channels_last": channels_last,
        "compile": compile,
        "amp": amp or "fp32",
        "fuse_bn": fuse_bn,
        "path": "eager model(x)" if eager else "prepared (folded, exact upsample+argmax)",
        "peak_memory_mb": peak / 2**20,
        "peak_memory_kind": "cuda max allocated" if dev.type == "cuda" else "process RSS",
    }


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def profile_model(name: str, *, resolution: tuple[int, int] = (1024, 2048), num_classes: int = 19,
                  flops: bool = True, latency: bool = True, latency_resolution: tuple[int, int] | None = None,
                  model_kwargs: dict | None = None, **latency_kwargs) -> dict:
    """Everything ``eseg profile`` reports for one registered model, as a JSON-able dict."""
    model = build_model(name, num_classes=num_classes, **(model_kwargs or {}))
    res: dict = {"model": model.config.get("name", name), "resolution": f"{resolution[0]}x{resolution[1]}",
                 "num_classes": num_classes}
    res.update(count_params(model))
    if flops:
        fl = count_flops(model, resolution)
        res.update(flops=fl["flops"], flops_conv=fl["flops_conv"], flops_unit="multiply-adds (fvcore)",
                   flops_by_operator=fl["by_operator"], skipped_ops=fl["skipped_ops"])
    if latency:
        lat_res = latency_resolution or resolution
        res.update(measure_latency(model, lat_res, **latency_kwargs))
        res["latency_resolution"] = f"{lat_res[0]}x{lat_res[1]}"
        if res["device"].startswith("cpu"):
            res["cpu_bf16"] = precision.cpu_bf16_support()
            res["precision_note"] = precision.precision_note(latency_kwargs.get("amp"), "cpu", "profile")
    return res
