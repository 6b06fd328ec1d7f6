"""Inference preparation: one function that turns a trained model into the fastest exact one.

Steps (each exact, so the prepared model's logits equal the training model's up to float rounding):
batch norm folded into the convolutions, fusion weights frozen into constants (:mod:`.fold`), weights and
activations in channels_last where that is faster (CPU and CUDA convolutions), on CPU 1x1 convolutions
sent to oneDNN (:class:`PointwiseConv`), optionally ``torch.compile``. Autocast (bf16/fp16) is applied by
the caller around the forward pass and is *not* exact; it is never on by default.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F
from torch import nn

from eseg_cli.errors import EsegError
from eseg_cli.inference.fold import fold_batchnorm, freeze_fusion_weights
from eseg_cli.inference.precision import amp_dtype  # noqa: F401  (the one amp table; re-exported here)

# Why a private op: for 1x1 kernels PyTorch's CPU dispatcher picks its generic ``_slow_conv2d_forward`` (a
# GEMM), which first copies the bias into the whole output. Once batch norm is folded every 1x1 conv has a bias,
# and that copy costs about as much as the GEMM; ESeg's MBConv blocks and decoder are full of 1x1 convs.
# ``aten::mkldnn_convolution`` (oneDNN, what the dispatcher picks for larger kernels) computes the same result
# (bit for bit in our tests) in about half the time. It is private: no stability promise. So
# it is used only after :func:`check_onednn_pointwise` found it with the schema below and computing what
# ``conv2d`` computes; otherwise preparing a model fails loudly (never silently slower, never wrong).
ONEDNN_OP = "mkldnn_convolution"
ONEDNN_SCHEMA = ("aten::mkldnn_convolution(Tensor self, Tensor weight, Tensor? bias, SymInt[] padding, "
                 "SymInt[] stride, SymInt[] dilation, SymInt groups) -> Tensor")


@functools.cache
def check_onednn_pointwise() -> None:
    """Raise when the private ``aten::mkldnn_convolution`` that :class:`PointwiseConv` calls is gone, has
    another signature, or no longer computes ``conv2d`` (checked once per process)."""
    fix = (f"eseg_cli/inference/prepare.py's PointwiseConv must be updated for torch {torch.__version__} (or "
           "use_pointwise_kernels dropped, which makes CPU inference slower)")
    op = getattr(torch.ops.aten, ONEDNN_OP, None)
    if op is None:
        raise RuntimeError(f"torch.ops.aten.{ONEDNN_OP} is gone; {fix}")
    schema = str(op.default._schema)
    if schema != ONEDNN_SCHEMA:
        raise RuntimeError(f"torch.ops.aten.{ONEDNN_OP} changed its signature to {schema}; {fix}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 7, generator=g).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(4, 8, 1, 1, generator=g), torch.randn(4, generator=g)
    with torch.inference_mode():
        got, want = op(x, w, b, [0, 0], [1, 1], [1, 1], 1), F.conv2d(x, w, b)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
        raise RuntimeError(f"torch.ops.aten.{ONEDNN_OP} no longer computes conv2d; {fix}")


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution that calls oneDNN directly for float32 channels_last inputs on CPU (half the time of
    the dispatcher's choice once a folded bias is there; see :data:`ONEDNN_OP`). Anything else (autocast,
    tracing, export, compile, other devices) takes the ordinary ``conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and x.is_contiguous(memory_format=torch.channels_last) and not torch.is_autocast_enabled("cpu")
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling()):
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride,
                                                     self.dilation, self.groups)
        return super().forward(x)


def use_pointwise_kernels(model: nn.Module) -> int:
    """Swap every plain 1x1 ``nn.Conv2d`` of ``model`` (in place) for :class:`PointwiseConv`; return how many.
    Raises ``RuntimeError`` when :func:`check_onednn_pointwise` finds the private op changed."""
    check_onednn_pointwise()
    count = 0
    for m in model.modules():
        if (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.padding == (0, 0) and m.groups == 1
                and m.padding_mode == "zeros" and m.dilation == (1, 1)):
            m.__class__ = PointwiseConv
            count += 1
    return count


def default_channels_last(device: torch.device) -> bool:
    """channels_last is faster for these depthwise-heavy networks on CPU and CUDA; elsewhere keep NCHW."""
    return device.type in ("cpu", "cuda")


def compile_inference(model: nn.Module, dynamic: bool = False) -> nn.Module:
    """``torch.compile`` ``model`` (in place) for inference: its ``forward`` and, where it has one, its
    ``forward_logits`` (what :class:`~eseg_cli.inference.Predictor` calls), each per bound method.

    Inductor's *freezing* is on: the weights become constants, so on CPU every convolution gets oneDNN's
    pre-packed weights with its activation (and residual add) fused in, and on CUDA constant folding
    removes the weight-side work. It requires that the weights never change afterwards, which holds for a
    prepared model. ``dynamic``: a graph with symbolic height and width serves images of many sizes (the model
    then resamples by pyramid level, see ``models.layers.traced_for_inference``); otherwise each new size
    compiles again. Torch still guards on one thing of its own, in the re-trace inductor runs: at the pyramid's
    top a map one pixel high (or wide) is both NCHW- and NHWC-contiguous, and its convolution's layout choice
    guards on it, so one graph holds for a range of heights and one of widths (measured on the tiny test
    model: ``257 <= h <= 512`` for a graph first compiled at 510x500, and the same for the width) and a size
    outside them compiles another (on the quick-start ESeg-Lite-S: one graph for 256x512 and 240x480, one for
    300x400 and 360x500).

    On CPU a static graph's kernels are called from C++ (inductor's ``cpp_wrapper``), not Python: ESeg-Lite-S at
    1024x2048 on 2 cores, model only, 10 interleaved rounds, minimums: bf16 67.8 -> 66.5 ms, fp32 124.9 -> 124.1 ms
    (the int8 graphs gain more, :data:`~eseg_cli.inference.int8.CPP_WRAPPER`). Not for ``dynamic`` graphs: with it,
    images of mixed sizes compiled two graphs where one served them (``tests/test_predict_export.py``).
    """
    cpp_wrapper = not dynamic and all(p.device.type == "cpu" for p in model.parameters())
    for name in ("forward_logits", "forward"):
        if callable(getattr(model, name, None)):
            setattr(model, name, compiled(getattr(model, name), freezing=True, dynamic=dynamic,
                                          cpp_wrapper=cpp_wrapper))
    return model


#: compiled graphs one method's code may hold (dynamo's own limit, 8, counts every model instance and input
#: size together: past it dynamo silently runs the method eagerly, uncompiled and unfrozen)
RECOMPILE_LIMIT = 64


def compile_training(fn):
    """``torch.compile(fn)`` for a training step's forward and loss (no freezing: the weights change)."""
    return compiled(fn, freezing=False)


def compiled(fn, *, freezing: bool, dynamic: bool = False, cpp_wrapper: bool = False):
    """``torch.compile(fn, dynamic=dynamic)`` with inductor's ``freezing`` (and ``cpp_wrapper``: the code that calls
    the kernels in C++, not Python) as given and dynamo's recompile limit raised to :data:`RECOMPILE_LIMIT`, all
    patched around each call (freezing is read from the global config while compiling, where
    ``torch.compile(options=...)`` does not reach); a missing toolchain (a C++ compiler on CPU, triton on GPU) is
    named, with what to do, at the first call."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    compiled_fn = torch.compile(fn, dynamic=dynamic)
    # dynamic: torch's own checks ("is this dim 1?": contiguity, broadcasting) would guard on the pyramid's top
    # maps being 1x1 or not, a recompilation at P9's 512-pixel steps; size-oblivious reasoning answers them
    # without a guard (experimental; where this torch lacks it, those sizes compile again, nothing else changes)
    oblivious = dynamic and getattr(fx_config, "backed_size_oblivious", None) is not None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with inductor_config.patch(freezing=freezing, cpp_wrapper=cpp_wrapper), \
                dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT), \
                (fx_config.patch(backed_size_oblivious=True) if oblivious else contextlib.nullcontext()):
            try:
                return compiled_fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - dynamo wraps the backend's failure in its own types
                missing = missing_compiler(e)
                if missing:
                    raise EsegError(f"'compile' (torch.compile) needs {missing}, which this machine lacks; install "
                                    "it, or run without 'compile': the result is the same, only slower",
                                    field="compile") from None
                raise

    return call


def missing_compiler(e: BaseException) -> str | None:
    """What a failed ``torch.compile`` lacks (a C++ compiler on CPU, triton on GPU), or None for other failures.
    Dynamo wraps the backend's error (``BackendCompilerFailed``), so the chain of causes is searched."""
    seen = 0
    while e is not None and seen < 8:
        text = f"{type(e).__name__}: {e}"
        if "InvalidCxxCompiler" in text or "C++ compiler" in text:
            return "a working C++ compiler (e.g. g++: apt install g++)"
        if "triton" in text.lower() and ("cannot find" in text.lower() or "not installed" in text.lower()):
            return "triton (pip install triton)"
        e, seen = getattr(e, "inner_exception", None) or e.__cause__ or e.__context__, seen + 1
    return None


def prepare_model(model: nn.Module, *, device: str | torch.device = "cpu", fold: bool = True,
                  channels_last: bool | None = None, compile: bool = False, compile_dynamic: bool = False,
                  copy_model: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` ready for inference on ``device``.

    Args:
        fold: fold batch norm and freeze the fusion weights (exact; on by default).
        channels_last: ``None`` picks the faster layout for the device.
        compile: :func:`compile_inference` (the first call compiles).
        compile_dynamic: compile graphs with symbolic sizes (one per range of sizes), not one per size.
        copy_model: leave ``model`` untouched (``False`` prepares it in place).

    The returned module keeps the model's interface (``forward`` gives logits at the input size) and
    carries ``prepared = {"folded_bn": n, "frozen_fusions": n, "channels_last": bool, "compiled": bool}``.
    """
    device = torch.device(device)
    model = copy.deepcopy(model) if copy_model else model
    model.eval()
    info = {"folded_bn": 0, "frozen_fusions": 0, "channels_last": False, "compiled": bool(compile),
            "pointwise_kernels": 0}
    if fold:
        info["folded_bn"] = fold_batchnorm(model)
        info["frozen_fusions"] = freeze_fusion_weights(model)
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device)
    if channels_last is None:
        channels_last = default_channels_last(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if device.type == "cpu" and torch.backends.mkldnn.is_available():
            info["pointwise_kernels"] = use_pointwise_kernels(model)
    info["channels_last"] = bool(channels_last)
    if compile:
        compile_inference(model, dynamic=compile_dynamic)
    info["compile_dynamic"] = bool(compile and compile_dynamic)
    model.prepared = info
    return model
