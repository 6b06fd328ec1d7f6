"""int8 inference through PyTorch 2 export quantisation (torchao's pt2e with ``X86InductorQuantizer``), checked.

:func:`quantize_int8` takes any ``nn.Module`` that maps a float NCHW batch to logits (an ESeg model's
``forward_logits``, a peer model) and calibration batches, and returns an :class:`Int8Model`: a callable on a
float NCHW tensor that returns the logits, computed by oneDNN int8 convolutions (VNNI / AMX) through
``torch.compile`` with inductor's freezing.

The route: ``torch.export`` (strict: the non-strict tracer of torch 2.14 gives every ``add`` the same source
name, and the quantizer then refuses the graph), ``prepare_pt2e`` (observers), the calibration batches through
the observed graph, ``convert_pt2e`` (quantize / dequantize pairs around each quantised op), then
``torch.compile`` with freezing, where inductor fuses each dequantize -> conv -> quantize into one
``onednn.qconv`` call, made from C++ (inductor's ``cpp_wrapper``: :data:`CPP_WRAPPER`).

This route has gone wrong silently in torch releases before (quantising nothing, or compiling back to float32
convolutions), so both ends are checked and a model that is not really int8 is refused
(:class:`NotQuantized`): the converted graph must hold quantize/dequantize nodes and quantised convolutions,
and the code inductor generated must call oneDNN's int8 convolutions. And an int8 model that is int8 but wrong is
refused too: on the first input of each shape its classes are compared with the float model's, and an image size
where fewer than :data:`MIN_AGREEMENT` of the pixels agree is refused (:class:`Int8Inaccurate`; ESeg-S, trained on
small crops, agreed on 47-65% at 1024x2048). What was found is in ``Int8Model.report``.

Sizes are static: an exported program is specialised to its image size (the batch stays dynamic). Each new
image size is exported, calibrated on the calibration images (resized to it), converted and compiled: tens of
seconds, once per size (the export keeps the other sizes' compiled graphs: :func:`keep_compiled_code`).
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eseg_cli.data.datasets import build_dataset
from eseg_cli.data.transforms import build_transforms
from eseg_cli.errors import EsegError
from eseg_cli.inference.prepare import compiled
from eseg_cli.models.heads import FusionHead

INSTALL_HINT = "pip install 'eseg[deploy]' (torchao)"
#: graph node targets (``str(node.target)``) of the quantize / dequantize ops pt2e inserts
QUANTIZE_OPS = ("quantized_decomposed.quantize_per_tensor.default",
                "quantized_decomposed.quantize_per_channel.default")
DEQUANTIZE_OPS = ("quantized_decomposed.dequantize_per_tensor.default",
                  "quantized_decomposed.dequantize_per_channel.default")
#: a call of one of oneDNN's int8 convolutions in inductor's generated code (``qconv2d_pointwise``,
#: ``qconv_pointwise``, their ``.binary`` / ``.tensor`` variants), from Python or from the C++ wrapper
QCONV_CALL = re.compile(r"torch\.ops\.onednn\.qconv\w*\.\w+\(|aoti_torch_cpu__qconv\w*\(")
#: a float convolution in the generated code (oneDNN's fused float conv, or aten's), from Python or C++
FLOAT_CONV_CALL = re.compile(r"torch\.ops\.mkldnn\._convolution_pointwise\w*\.\w+\(|extern_kernels\.convolution\(|"
                             r"torch\.ops\.aten\.convolution\.default\(|aoti_torch_cpu_mkldnn__convolution\w*\(|"
                             r"aoti_torch_cpu_convolution\(")


#: compile int8 graphs with inductor's C++ wrapper: the ~60 (ESeg-Lite-S) to ~240 (ESeg-S) oneDNN calls of a
#: forward are made from C++ instead of Python. At 1024x2048 on 2 cores (model only, random weights, 10 interleaved
#: rounds, outputs identical): ESeg-Lite-S 45.7 -> 44.2 ms, ESeg-S 366.9 -> 354.6 ms; the first call at each size
#: compiles longer (12 -> 22 s, 66 -> 83 s)
CPP_WRAPPER = True


class NotQuantized(EsegError):
    """The int8 route did not give an int8 model (nothing quantised, or compiled to float32 convolutions)."""

    exit_code = 1


#: the least share of pixels (positions of the logits) to which int8 must give the float model's class on the first
#: input of each shape, or that image size is refused (:class:`Int8Inaccurate`). Measured at 1024x2048 on a trained
#: model's image upscaled to it: the quick-start ESeg-Lite-S 95.4% (its val mIoU within 0.01 of float32's), the
#: synthetic-recipe ESeg-S 65% and 47% on the two CPUs' runs (``benchmarks/int8_error.py``); at their own 256x512
#: val size 98.2% and 95.2% (``reports/benchmarks/README.md``).
MIN_AGREEMENT = 0.9


class Int8Inaccurate(EsegError):
    """int8 gives another class than the float model on too many pixels of an input: its masks would not be the
    model's."""

    exit_code = 1


def class_agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """The share of positions whose class (argmax over dimension 1) ``logits`` gives as ``reference`` does."""
    return float((logits.argmax(1) == reference.argmax(1)).float().mean())


def check_min_agreement(value) -> float:
    """``value`` as a share in [0, 1]; refuses anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise EsegError(f"'int8_min_agreement' must be a share of pixels between 0 and 1, got {value!r}",
                        field="int8_min_agreement")
    return float(value)


def require_torchao():
    """torchao's pt2e entry points and eseg's quantizer (:func:`scaled_int8_inputs` over torchao's X86 recipe), or
    say how to install them."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantizer.utils import get_input_act_qspec
    except ImportError:
        raise EsegError(f"int8 quantisation needs torchao: {INSTALL_HINT}") from None

    class Quantizer(x86.X86InductorQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            scaled_int8_inputs(model, lambda: get_input_act_qspec(self.global_config), x86)
            return model

    quantizer = Quantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    return prepare_pt2e, convert_pt2e, quantizer


def scaled_int8_inputs(gm: torch.fx.GraphModule, qspec, x86) -> int:
    """Quantise the float input of every multiplication by a number (``x * w``: the level weights of ESeg's fusion
    nodes and head) that comes straight from a quantised pattern (a convolution with its activation, or a max
    pooling), which torchao's X86 recipe leaves in float32.

    The convolution then writes int8 instead of float32 and the fused kernel after it reads int8, a quarter of the
    bytes; those kernels are memory-bound. Measured on ESeg-Lite-S at 1024x2048 on 2 cores (model only, median of 8
    interleaved rounds, random weights): 74.4 -> 63.7 ms, labels equal to the previous int8 graph's on 99.97% of
    pixels; on the trained quick-start model int8 val mIoU 52.24 before, 52.26 after. Inputs
    multiplied by a tensor and means stay float: quantising squeeze-and-excitation's input as well made ESeg-S
    faster still (409 -> 368 ms in one A/B) but cost it 0.71 val mIoU against fp32 (53.07 against 53.78; 0.38
    with the level weights alone).
    Returns how many multiplications it annotated.
    """
    n = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.aten.mul.Tensor or len(node.args) != 2 or \
                isinstance(node.args[1], torch.fx.Node):
            continue
        annotation = node.meta.get(x86.QUANT_ANNOTATION_KEY)
        if annotation is not None and annotation._annotated:
            continue
        source = node.args[0]
        found = isinstance(source, torch.fx.Node) and source.meta.get(x86.QUANT_ANNOTATION_KEY)
        if found and getattr(found, "_is_output_of_quantized_pattern", False):
            node.meta[x86.QUANT_ANNOTATION_KEY] = x86._X86InductorQuantizationAnnotation(
                input_qspec_map={source: qspec()}, _annotated=True)
            n += 1
    return n


def calibration_images(calibration: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The calibration batches as single ``(1, C, H, W)`` float images of one size; refuses an empty set."""
    images: list[torch.Tensor] = []
    for t in calibration:
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or not t.is_floating_point():
            raise EsegError("calibration batches must be float (B, C, H, W) tensors, normalised as the model's "
                            f"input, got {type(t).__name__} {tuple(getattr(t, 'shape', ()))}", field="calibration")
        images.extend(x[None].contiguous().float() for x in t.detach().cpu())
    if not images:
        raise EsegError("the calibration set is empty: int8 needs some images to measure activation ranges; give "
                        "at least one (e.g. 'calibrate' N training images)", field="calibration")
    sizes = {tuple(x.shape) for x in images}
    if len(sizes) > 1:
        raise EsegError(f"calibration images must share one size (the calibrated graph is specialised to it), got "
                        f"{sorted(sizes)}; resize them first", field="calibration")
    return images


def graph_counts(gm: torch.fx.GraphModule) -> dict[str, int]:
    """Quantize / dequantize nodes and convolutions of a converted graph, and the convolutions whose weight
    comes through a dequantize node (the quantised ones)."""
    targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    convs = [n for n in gm.graph.nodes if n.op == "call_function" and "conv" in str(n.target)
             and str(n.target).startswith("aten.")]
    qconvs = [n for n in convs if len(n.args) > 1 and isinstance(n.args[1], torch.fx.Node)
              and str(n.args[1].target) in DEQUANTIZE_OPS]
    return {"quantize": sum(t in QUANTIZE_OPS for t in targets),
            "dequantize": sum(t in DEQUANTIZE_OPS for t in targets),
            "convs": len(convs), "quantized_convs": len(qconvs)}


def check_graph(counts: dict[str, int]) -> None:
    """Refuse a converted graph in which nothing was quantised."""
    if counts["quantize"] == 0 or counts["dequantize"] == 0 or counts["quantized_convs"] == 0:
        raise NotQuantized(f"int8 quantisation quantised nothing ({counts['quantize']} quantize and "
                           f"{counts['dequantize']} dequantize nodes, {counts['quantized_convs']} of "
                           f"{counts['convs']} convolutions quantised): the model would run in float32; refusing")


def code_counts(code: str) -> dict[str, int]:
    """int8 and float convolution calls in inductor's generated code."""
    return {"int8_conv_calls": len(QCONV_CALL.findall(code)), "float_conv_calls": len(FLOAT_CONV_CALL.findall(code))}


def check_code(counts: dict[str, int]) -> None:
    """Refuse compiled code that calls no oneDNN int8 convolution (float32 in disguise)."""
    if counts["int8_conv_calls"] == 0:
        raise NotQuantized(f"the compiled int8 model calls no oneDNN int8 convolution ({counts['float_conv_calls']} "
                           "float convolutions): torch.compile lowered it to float32; refusing")


class ChannelsLastLogits(nn.Module):
    """``model``'s logits in channels_last memory: what the int8 graph returns.

    The last int8 convolution then writes its float output in oneDNN's own layout instead of being converted to
    NCHW, and the post-processing (:func:`~eseg_cli.inference.upsample_argmax`, which reads class vectors per
    pixel) needs no copy either (ESeg-Lite-S at 1024x2048: 6.9 against 9.9 ms of post-processing in a profile; no
    measurable change end to end in ``benchmarks/int8_routes.py``). The values are the same.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def keep_compiled_code():
    """Run a strict ``torch.export``, or inductor's ``run_and_get_code``, without their ``torch._dynamo.reset()``.

    Both reset dynamo (torch 2.14: ``torch/_dynamo/functional_export.py``, ``torch/_inductor/utils.py``), which
    throws away every graph ``torch.compile`` has made in the process: each int8 graph of another image size (and
    any compiled float model beside it) then compiled again at its next call, tens of seconds each, silently
    (measured: a compiled ESeg-Lite-S at 256x512 took 12.1 s on its first call after an int8 export, 10 ms
    before; in ``benchmarks/peers.py`` every compiled cell's first timed call took 4 to 40 s). The export's own
    trace does not read those caches (the exported graph is the same with or without the reset: checked), and
    the code check drops only its own graph's entry; ``tests/test_int8.py`` checks that a compiled function is
    not compiled again after an int8 model is built and run.
    """
    import torch._dynamo as dynamo

    reset = dynamo.reset
    dynamo.reset = _no_reset
    try:
        yield
    finally:
        dynamo.reset = reset


def _no_reset() -> None:
    """Stands for ``torch._dynamo.reset`` during :func:`keep_compiled_code`."""


def _export(model: nn.Module, size: tuple[int, int], channels: int) -> torch.fx.GraphModule:
    """``model`` exported at ``size``, with a dynamic batch (an example batch of 2: a batch of 1 is specialised),
    returning channels_last logits (:class:`ChannelsLastLogits`)."""
    example = torch.zeros(2, channels, *size)
    try:
        with keep_compiled_code():
            return torch.export.export(ChannelsLastLogits(model), (example,),
                                       dynamic_shapes={"x": {0: torch.export.Dim("batch", max=1024)}},
                                       strict=True).module()
    except Exception as e:  # noqa: BLE001 - torch.export reports many kinds of failure
        raise EsegError(f"torch.export could not export this model for int8: {str(e).strip().splitlines()[0][:300]}"
                        ) from None


class Int8Model:
    """A float model quantised to int8 (:func:`quantize_int8`): ``m(x)`` for a float NCHW batch gives its logits.

    One converted graph per image size, calibrated there: at the calibration images' own size on them, at
    another size on them resized bilinearly to it (the pyramid's graph changes with the size: where a level is
    1x1 a resampling is a no-op, so one size's observers do not carry over to another's graph). The first call
    at each shape compiles, checks that the code is int8, and compares its classes with ``reference``'s (the float
    model; one float forward) on that input: below ``min_agreement`` its image size is refused
    (:class:`Int8Inaccurate`). ``report`` holds, per shape, the graph's quantize/dequantize nodes and quantised
    convolutions, the code's int8 and float convolution calls, the calibration used and ``agreement_with_float``.
    """

    def __init__(self, model: nn.Module, images: list[torch.Tensor], method: str, *,
                 reference: nn.Module | None = None, min_agreement: float = MIN_AGREEMENT):
        self._model = model
        self._reference = model if reference is None else reference
        self.min_agreement = check_min_agreement(min_agreement)
        self._images = images
        self._graphs: dict[tuple[int, int], object] = {}
        self._checked: set[tuple] = set()
        self._refused: dict[tuple[int, int], str] = {}
        self.calibration = {"images": len(images), "size": "x".join(map(str, images[0].shape[-2:])),
                            "method": method}
        self.report: dict[str, dict] = {}

    def __repr__(self) -> str:
        return f"Int8Model({type(self._model).__name__}, calibration={self.calibration}, shapes={list(self.report)})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        key = (tuple(x.shape), x.stride(), x.dtype)
        if size in self._refused:
            self._refuse(size)
        with torch.no_grad():
            if size not in self._graphs:
                self.add_size(size)
            fn, counts, gm = self._graphs[size]
            if key in self._checked:
                return fn(x)
            # the first call at a shape compiles (torch.compile specialises to it): read the code it made.
            # run_and_get_code resets dynamo to be sure a compilation happens; only this graph's entry is dropped
            # (keep_compiled_code), not every other size's graph and every compiled model in the process
            from torch._dynamo.eval_frame import remove_from_cache
            from torch._inductor.utils import run_and_get_code  # about a second to import; only when compiling

            with keep_compiled_code():
                remove_from_cache(gm)
                out, code = run_and_get_code(fn, x)
            found = {**counts, **code_counts("\n".join(code))}
            check_code(found)
            self.report["x".join(map(str, x.shape))] = found
            # and that its classes are the float model's on this first input (one float forward per shape)
            found["agreement_with_float"] = agreement = round(class_agreement(out, self._reference(x)), 5)
            if agreement < self.min_agreement:
                self._refused[size] = (
                    f"int8 gives the float32 model's class on only {agreement:.1%} of the pixels of its first "
                    f"{size[0]}x{size[1]} input (at least {self.min_agreement:.0%} wanted): this model does not "
                    "quantise well at this size; run it without int8 ('compile' with 'amp' bf16 is the fast mode), "
                    "or accept the difference with a lower 'int8_min_agreement'")
                self._refuse(size)
            self._checked.add(key)
            return out

    def _refuse(self, size: tuple[int, int]):
        raise Int8Inaccurate(self._refused[size], field=("int8_min_agreement", "compile", "amp"))

    def add_size(self, size: tuple[int, int]) -> None:
        """Convert and calibrate the graph at ``size`` (compiled lazily, at its first call, with inductor's C++
        wrapper: :data:`CPP_WRAPPER`)."""
        gm, counts = self.converted(size)
        self._graphs[size] = (compiled(gm, freezing=True, cpp_wrapper=CPP_WRAPPER), counts, gm)

    def graph(self, size: tuple[int, int]) -> torch.fx.GraphModule:
        """The converted (quantize/dequantize) graph this model runs at ``size``, not compiled: to inspect it, or
        to run it eagerly (quantisation simulated in float; ``benchmarks/int8_error.py``)."""
        if size not in self._graphs:
            self.add_size(size)
        return self._graphs[size][2]

    def calibration_at(self, size: tuple[int, int]) -> list[torch.Tensor]:
        """The calibration images at ``size`` (resized bilinearly when theirs differs)."""
        if tuple(self._images[0].shape[-2:]) == tuple(size):
            return self._images
        return [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in self._images]

    def converted(self, size: tuple[int, int]) -> tuple[torch.fx.GraphModule, dict]:
        """The converted (quantize/dequantize) graph at ``size``, calibrated there, and its counts; refuses
        a graph in which nothing was quantised."""
        prepare_pt2e, convert_pt2e, quantizer = require_torchao()
        prepared = prepare_pt2e(_export(self._model, size, self._images[0].shape[1]), quantizer)
        images = self.calibration_at(size)
        with torch.no_grad():
            for x in images:
                prepared(x)
        gm = convert_pt2e(prepared)
        counts = graph_counts(gm)
        check_graph(counts)
        counts["calibrated_on"] = f"{len(images)} images at {size[0]}x{size[1]}" + (
            "" if images is self._images else f" (resized from {self.calibration['size']})")
        return gm, counts


def coarse_to_fine_heads(model: nn.Module) -> int:
    """Set every ESeg head in ``model`` to sum its levels coarse to fine (``FusionHead.coarse_to_fine``: not exact,
    one resampling per level at its own scale instead of each level to P2's size); returns how many.

    int8's choice: its graph spends the resampling in float32 (the pyramid leaves its int8 convolutions in float),
    one inductor kernel with index arithmetic per level and output pixel. The quick-start ESeg-Lite-S end to end
    at 1024x2048 on 2 cores: 75.4 -> 68.5 ms (median of 15 interleaved rounds), val mIoU 56.70 -> 56.83 against
    56.78 in float32, pixels as float32 99.10% -> 98.45% (``reports/benchmarks/int8_routes_c2f.md``).
    """
    heads = [m for m in model.modules() if isinstance(m, FusionHead)]
    for m in heads:
        m.coarse_to_fine = True
    return len(heads)


def quantize_int8(model: nn.Module, calibration: Sequence[torch.Tensor] | Iterable[torch.Tensor], *,
                  coarse_to_fine_head: bool = True, min_agreement: float = MIN_AGREEMENT) -> Int8Model:
    """Quantise ``model`` (a module mapping a float NCHW batch to logits, in eval mode) to int8, static
    activations per tensor and weights per channel (torchao's X86 inductor default), calibrated on
    ``calibration``: float ``(B, C, H, W)`` batches of one image size, normalised as the model's input.
    ``coarse_to_fine_head``: an ESeg model's head sums its levels coarse to fine (:func:`coarse_to_fine_heads`,
    on a copy of ``model``; the default: part of int8's recipe, measured with it).

    ``min_agreement``: at each input shape's first call the int8 logits are compared with ``model``'s own (the
    exact head's, in float32): where fewer than this share of positions get the same class, that image size is
    refused (:class:`Int8Inaccurate`), then and at every later call. The share found is in ``report``.

    Raises :class:`~eseg_cli.errors.EsegError` for an empty calibration set or images of several sizes, and
    :class:`NotQuantized` when the result would not be int8 (checked here on the calibration size's graph, and
    on the generated code at each input size's first call).
    """
    min_agreement = check_min_agreement(min_agreement)
    reference = model
    images = calibration_images(calibration)
    method = ("pt2e X86InductorQuantizer: activations per tensor (histogram observer), weights per channel, int8; "
              "inputs scaled by a number quantised")
    if coarse_to_fine_head and any(isinstance(m, FusionHead) for m in model.modules()):
        model = copy.deepcopy(model)
        method += f"; {coarse_to_fine_heads(model)} head(s) summed coarse to fine"
    q = Int8Model(model.eval(), images, method, reference=reference.eval(), min_agreement=min_agreement)
    q.add_size(tuple(images[0].shape[-2:]))  # refuse now (nothing quantised), not at the first call
    return q


def run_calibration_images(checkpoint: dict, n: int, *, split: str = "train") -> list[torch.Tensor]:
    """``n`` images of the ``split`` of the dataset a checkpoint was trained on, as its evaluation reads them
    (``val_resize`` when the run sets one; uint8 ``(1, 3, H, W)``, for the Predictor's normalisation), spread
    evenly over the split. Refuses ``n`` < 1, a checkpoint without a dataset, an empty split and ``n`` larger
    than the split."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise EsegError(f"'calibrate' must be a number of images, at least 1, got {n!r}: int8 calibration needs "
                        "images", field="calibrate")
    cfg = checkpoint.get("config") or {}
    dataset = cfg.get("dataset")
    if not dataset:
        raise EsegError("this model records no dataset to calibrate on (a built model, not a run's checkpoint); "
                        "give calibration images instead", field="calibration")
    root = cfg.get("data_root") or checkpoint.get("data_root")
    resize = cfg.get("val_resize")
    ds = build_dataset(dataset, root, split,
                       transform=build_transforms(False, resize=tuple(resize) if resize else None, normalize=False))
    if len(ds) == 0:
        raise EsegError(f"the {split} split of {dataset} at {root or 'its built-in set'} holds no images to "
                        "calibrate on; check 'data_root'", field="calibrate")
    if n > len(ds):
        raise EsegError(f"'calibrate' {n} is more than the {len(ds)} {split} images of {dataset}; give at most "
                        f"{len(ds)}", field="calibrate")
    index = sorted({round(i * (len(ds) - 1) / max(n - 1, 1)) for i in range(n)})
    return [ds[i][0][None] for i in index]
