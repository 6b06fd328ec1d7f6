"""Export the prepared model to ONNX, TorchScript or a ``torch.export`` program, and prove it agrees.

Contract of every exported model (the same as the PyTorch model's ``forward``): input a float32 NCHW
batch normalised as in training (``(pixel / 255 - mean) / std``), dynamic batch, height and width; output
the class logits at the input size. The normalisation, class names and palette travel with the file
(ONNX metadata; a ``eseg.json`` extra file for TorchScript and pt2; returned by :func:`read_metadata`).
ONNX and TorchScript record one example pass; a pt2 program is exported with symbolic sizes: see :func:`_pt2_bytes`.

After writing, the file is loaded back and run beside PyTorch at two sizes (one not a multiple of 32):
the max abs difference of the logits and the argmax agreement are reported, and the export fails when
agreement is below 99.9%.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.fx.experimental._config as fx_config
from torch.onnx import _constants

from eseg_cli.errors import EsegError
from eseg_cli.inference import modes
from eseg_cli.inference.predictor import BasePredictor, Predictor
from eseg_cli.run import resolve_checkpoint
from eseg_cli.utils import MAX_SIDE, atomic_write_bytes

FORMATS = ("onnx", "torchscript", "pt2")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "pt2": ".pt2"}
DEFAULT_CHECK_SIZES = ((512, 1024), (360, 500))
# ONNX and TorchScript record the graph of one example pass. It must be large enough that every pyramid level
# differs in size from the next (P8 at least 2x2 when P9 is 1x1), or the resampling between equal-sized
# levels is recorded as a no-op and larger inputs fail.
TRACE_SIZE = (512, 1024)
MIN_AGREEMENT = 0.999
PT2_MIN_SIDE = 32  # the smallest height and width a pt2 program takes (and that export checks at)
DEPLOY_HINT = "pip install 'eseg[deploy]' (onnx and onnxruntime)"


def require_onnx(what: str = "ONNX export"):
    """Import onnx and onnxruntime, or say how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise EsegError(f"{what} needs onnx and onnxruntime: {DEPLOY_HINT}") from None
    return onnx, onnxruntime


def metadata(predictor: Predictor) -> dict[str, str]:
    """What a deployed model needs besides its weights, as strings."""
    cfg = predictor.checkpoint.get("config") or {}
    root = cfg.get("data_root") or predictor.checkpoint.get("data_root")
    return {
        "eseg_format": "1",
        "input": "float32 NCHW, (pixel/255 - mean) / std, RGB; dynamic batch, height, width",
        "output": "float32 logits (batch, num_classes, height, width) at the input size",
        "mean": json.dumps(list(predictor.mean)),
        "std": json.dumps(list(predictor.std)),
        "num_classes": str(predictor.num_classes),
        "class_names": json.dumps(predictor.class_names),
        "palette": json.dumps([list(c) for c in predictor.palette]),
        "model": json.dumps((predictor.checkpoint.get("model_config") or {}).get("name")),
        "source": predictor.source,
        # what `eseg eval --onnx` scores against by default, as `eseg eval --checkpoint` takes it from the run
        "dataset": json.dumps(cfg.get("dataset")),
        "data_root": json.dumps(str(root) if root else None),
        "val_resize": json.dumps(cfg.get("val_resize")),
    }


#: the metadata keys :func:`metadata` writes (anything else in a file came from another tool)
WRITTEN_KEYS = ("eseg_format", "input", "output", "mean", "std", "num_classes", "class_names", "palette", "model",
                "source", "dataset", "data_root", "val_resize")


def check_opset(opset: int) -> None:
    """Refuse an ONNX opset that this torch's (TorchScript-based) exporter does not write, before exporting."""
    lo = getattr(_constants, "ONNX_MIN_OPSET", 7)
    hi = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 17))
    if not lo <= opset <= hi:
        raise EsegError(f"'opset' {opset} is not one this torch ({torch.__version__}) exports: give {lo} to {hi}",
                        field="opset")


def _onnx_bytes(model: torch.nn.Module, example: torch.Tensor, meta: dict[str, str], opset: int) -> bytes:
    onnx, _ = require_onnx()
    buf = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # no graph dump on stdout
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter: it keeps every shape computation symbolic, where torch.export's
        # constraint solver cannot handle the pyramid's ceil-division sizes
        try:
            torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": axes, "logits": axes})
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds (unsupported operator, opset)
            raise EsegError(f"ONNX export at 'opset' {opset} failed: {str(e).strip().splitlines()[0][:300]}",
                            field="opset") from None
    proto = onnx.load_from_string(buf.getvalue())
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto.SerializeToString()


def _torchscript_bytes(model: torch.nn.Module, example: torch.Tensor, meta: dict[str, str]) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export, but still supported
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, buf, _extra_files={"eseg.json": json.dumps(meta)})
    return buf.getvalue()


def _pt2_bytes(model: torch.nn.Module, example: torch.Tensor, meta: dict[str, str]) -> bytes:
    """A ``torch.export`` program with dynamic batch, height and width (height and width from ``PT2_MIN_SIDE`` to
    ``MAX_SIDE``).

    Two things stood in the way, both found with ``torch.export.draft_export``: (1) torch's contiguity checks ask
    of every map "is this dim 1?" (``Ne(((h - 1)//512) + 1, 1)`` at P9), which its solver cannot decide for every
    size, so it guards on them; size-oblivious reasoning (``backed_size_oblivious``, experimental, for export)
    answers them without a guard. (2) The model's own branches on sizes (is P9 1x1, is P9 the size of P8)
    take, while exporting, the path that holds at every size (see ``resize_by_level``). What remains,
    ``avg_pool2d(ceil_mode=True)``'s check that the last window starts inside the map
    (``2*((h - 1)//64) < ((h - 1)//32) + 1``, true for every h but not provable by the solver), becomes an assert
    run in the program (``prefer_deferred_runtime_asserts_over_guards``) instead of a failed export.
    """
    example = example.expand(2, *example.shape[1:]).contiguous()  # batch 1 would be specialised
    dims = {0: torch.export.Dim("batch", max=1024), 2: torch.export.Dim("height", min=PT2_MIN_SIDE, max=MAX_SIDE),
            3: torch.export.Dim("width", min=PT2_MIN_SIDE, max=MAX_SIDE)}
    oblivious = getattr(fx_config, "backed_size_oblivious", None) is not None
    try:
        with fx_config.patch(backed_size_oblivious=True) if oblivious else contextlib.nullcontext():
            program = torch.export.export(model, (example,), dynamic_shapes={"x": dims}, strict=False,
                                          prefer_deferred_runtime_asserts_over_guards=True)
    except Exception as e:  # noqa: BLE001 - torch.export reports many kinds of failure
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        guard = next((ln for ln in lines if "guard" in ln.lower()), lines[0] if lines else type(e).__name__)
        raise EsegError(f"torch.export could not export this model with dynamic height and width "
                        f"({guard[:300]}); use 'format' onnx or torchscript", field="format") from None
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={"eseg.json": json.dumps(meta)})
    return buf.getvalue()


def runtime_padding_layers(model: torch.nn.Module) -> list[str]:
    """timm's TF-"SAME" layers in ``model`` (``Conv2dSame``, ``MaxPool2dSame``, ...): they pad by an amount computed
    with ``math.ceil`` from the input size at run time, which a pt2 program with dynamic sizes cannot hold
    (``torch.export.save`` fails: "op <built-in function ceil> is not in _SYM_OPS")."""
    return sorted({type(m).__name__ for m in model.modules()
                   if type(m).__module__.startswith("timm.layers") and type(m).__name__.endswith("Same")})


def load_exported(path: str | Path, fmt: str | None = None):
    """A callable ``f(x: np.ndarray float32 NCHW) -> np.ndarray logits`` for an exported file."""
    path = Path(path)
    fmt = fmt or format_of(path)
    if fmt == "onnx":
        _, ort = require_onnx("Running an ONNX model")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            mod = torch.jit.load(str(path), map_location="cpu")
    else:
        mod = torch.export.load(str(path)).module()

    def run(x):
        with torch.inference_mode():
            return mod(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run


def read_metadata(path: str | Path, fmt: str | None = None) -> dict[str, str]:
    """The metadata written by :func:`export_model`."""
    path = Path(path)
    fmt = fmt or format_of(path)
    if fmt == "onnx":
        onnx, _ = require_onnx("Reading ONNX metadata")
        proto = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in proto.metadata_props}
    extra = {"eseg.json": ""}
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    else:
        torch.export.load(str(path), extra_files=extra)
    return json.loads(extra["eseg.json"] or "{}")


def format_of(path: Path) -> str:
    for fmt, suffix in SUFFIX.items():
        if path.suffix == suffix:
            return fmt
    raise EsegError(f"cannot tell the format of {path} from its suffix; use {', '.join(SUFFIX.values())}")


def check_parity(predictor: Predictor, path: str | Path, fmt: str,
                 sizes=DEFAULT_CHECK_SIZES, seed: int = 0, batch: int = 1) -> list[dict]:
    """Run the exported file and the prepared PyTorch model on the same inputs at each size."""
    run = load_exported(path, fmt)
    rng = np.random.default_rng(seed)
    rows = []
    for h, w in sizes:
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(batch)]
        x = predictor.to_tensor(images).contiguous()
        ref = predictor.logits(x).cpu().numpy()
        out = run(x.cpu().numpy())
        if out.shape != ref.shape:
            raise EsegError(f"the exported model gives logits of shape {out.shape} at {h}x{w}, PyTorch {ref.shape}")
        rows.append({"size": f"{h}x{w}", "batch": batch, "max_abs_diff": float(np.abs(out - ref).max()),
                     "max_abs_logit": float(np.abs(ref).max()),
                     "argmax_agreement": float((out.argmax(1) == ref.argmax(1)).mean())})
    return rows


def export_model(checkpoint, fmt: str, out: str | Path, *, sizes=DEFAULT_CHECK_SIZES, opset: int = 17,
                 use_ema: bool = True) -> dict:
    """Export the prepared model of ``checkpoint`` (run folder, file or built model) to ``out``.

    Returns ``{"path", "format", "checks": [...], "metadata": {...}}``; raises :class:`EsegError` when the
    exported model disagrees with PyTorch (argmax agreement < 99.9%) at any check size.
    """
    if fmt not in FORMATS:
        raise EsegError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        require_onnx()
        check_opset(opset)
    out = Path(out)
    if out.is_dir():
        raise EsegError(f"{out} is a folder; give the output file name (e.g. {out / ('model' + SUFFIX[fmt])})")
    if isinstance(checkpoint, (str, Path)) and out.exists():
        if out.resolve() == resolve_checkpoint(checkpoint).resolve():
            raise EsegError(f"'out' {out} is the checkpoint being exported; give another file name", field="out")
    if len(sizes) < 1 or any(min(s) < 32 for s in sizes):
        raise EsegError(f"check sizes must be at least 32x32, got {sizes}")
    predictor = Predictor(checkpoint, device="cpu", channels_last=False, use_ema=use_ema)
    model = predictor.model
    same = runtime_padding_layers(model) if fmt == "pt2" else []
    if same:
        raise EsegError(f"pt2 cannot hold this model's {', '.join(same)} (timm's TF 'SAME' padding, computed with "
                        "math.ceil from the input size at run time, which torch.export cannot save with dynamic "
                        "height and width); use 'format' onnx or torchscript", field="format")
    example = torch.zeros(1, 3, *TRACE_SIZE)
    meta = metadata(predictor)
    if fmt == "onnx":
        data = _onnx_bytes(model, example, meta, opset)
    elif fmt == "torchscript":
        data = _torchscript_bytes(model, example, meta)
    else:
        data = _pt2_bytes(model, example, meta)
    atomic_write_bytes(out, data)
    checks = check_parity(predictor, out, fmt, sizes)
    if fmt == "pt2":  # batch is a symbol of its own there, exported from a batch of 2: checked at 2 as well
        checks += check_parity(predictor, out, fmt, sizes[:1], batch=2)
    result = {"path": str(out), "format": fmt, "bytes": len(data), "checks": checks, "metadata": meta,
              "dynamic": "batch, height, width",
              "size": f"{PT2_MIN_SIDE} to {MAX_SIDE} per side" if fmt == "pt2" else "any"}
    bad = [c for c in checks if c["argmax_agreement"] < MIN_AGREEMENT]
    if bad:
        c = bad[0]
        raise EsegError(f"{out}: the exported model agrees with PyTorch on only {c['argmax_agreement']:.4%} of "
                        f"pixels at {c['size']} (max abs logit difference {c['max_abs_diff']:.3g}); "
                        f"the file is kept for inspection")
    return result


#: metadata keys written since ``eval --onnx`` (the run's dataset, its root and ``val_resize``), absent from older files
OPTIONAL_KEYS = ("dataset", "data_root", "val_resize")
#: ONNX operators that only a quantised (int8/uint8) graph holds
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
                 "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearLeakyRelu")


def parse_metadata(meta: dict[str, str], path: Path) -> dict:
    """The values :func:`metadata` wrote, parsed and checked: a file whose metadata is missing a key or holds a
    value that is not the JSON written there is refused naming the file and the key (no silent default)."""
    def value(key: str):
        if key not in meta:
            raise EsegError(f"{path}: its metadata has no '{key}' (not written by `eseg export`, or by an older "
                            "version); export the model again")
        try:
            return json.loads(meta[key])
        except ValueError:
            raise EsegError(f"{path}: its metadata '{key}' is not JSON ({meta[key][:40]!r}); export the model "
                            "again") from None

    out = {k: value(k) for k in ("num_classes", "class_names", "palette", "mean", "std", "model")}
    n = out["num_classes"]
    checks = {
        "num_classes": isinstance(n, int) and not isinstance(n, bool) and n >= 1,
        "class_names": isinstance(out["class_names"], list) and len(out["class_names"]) == n,
        "palette": isinstance(out["palette"], list) and len(out["palette"]) == n and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in out["palette"]),
        "mean": _three_finite(out["mean"]),
        "std": _three_finite(out["std"]) and all(v > 0 for v in out["std"]),
    }
    for key, ok in checks.items():
        if not ok:
            raise EsegError(f"{path}: its metadata '{key}' is not valid ({meta[key][:60]!r}); export the model "
                            "again")
    out["palette"] = [tuple(c) for c in out["palette"]]
    # written since `eval --onnx`; an older file has none of them (its dataset then comes from the options)
    for key in OPTIONAL_KEYS:
        v = value(key) if key in meta else None
        ok = {"dataset": v is None or isinstance(v, str), "data_root": v is None or isinstance(v, str),
              "val_resize": v is None or (isinstance(v, list) and len(v) == 2 and all(
                  isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in v))}[key]
        if not ok:
            raise EsegError(f"{path}: its metadata '{key}' is not valid ({meta[key][:60]!r}); export the model again")
        out[key] = v
    return out


def _three_finite(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)


class OnnxPredictor(BasePredictor):
    """The :class:`Predictor` image API over an exported ONNX file run by onnxruntime (CPU), in the same inference
    modes (``whole``, ``slide``, ``msflip``: :mod:`.modes` runs the file as it runs a model).

    Normalisation, class names and palette come from the file's metadata; ``metadata`` holds them parsed (and the
    dataset the run was trained on, when the file records it), ``extra_metadata`` whatever else the file carries
    (e.g. an int8 quantiser's notes), ``quantized_ops`` the count of quantised operators per type in its graph.
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, mode: str = "whole",
                 crop: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
                 scales=modes.DEFAULT_SCALES, flip: bool = True):
        onnx, ort = require_onnx("Running an ONNX model")
        path = Path(path)
        if not path.is_file():
            raise EsegError(f"ONNX model {path} does not exist")
        modes.check_inference(mode, crop, stride, tuple(scales))
        self.mode_kw = {"mode": mode, "crop": tuple(crop) if crop else None,
                        "stride": tuple(stride) if stride else None, "scales": tuple(scales), "flip": bool(flip)}
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise EsegError(f"ONNX model {path} could not be loaded ({str(e).splitlines()[0]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map
        self.metadata = meta = parse_metadata(raw, path)
        self.extra_metadata = {k: v for k, v in raw.items() if k not in WRITTEN_KEYS}
        ops = [n.op_type for n in graph.node]
        self.quantized_ops = {op: ops.count(op) for op in QUANTIZED_OPS if op in ops}
        self.source = str(path)
        self.device = torch.device("cpu")
        self.num_classes, self.class_names, self.palette = meta["num_classes"], meta["class_names"], meta["palette"]
        self.amp = None
        self.checkpoint = {"config": {}, "model_config": {"name": meta["model"]}}
        self._input = self.session.get_inputs()[0].name
        self._set_normalization(meta["mean"], meta["std"])

    @property
    def mode(self) -> str:
        return self.mode_kw["mode"]

    def __repr__(self) -> str:
        return f"OnnxPredictor({self.source}, mode={self.mode}, classes={self.num_classes})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The file's logits for a normalised batch (one onnxruntime call)."""
        out = self.session.run(None, {self._input: x.detach().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """As :meth:`Predictor.logits`: the file's logits (``whole``) or averaged over windows (``slide``)."""
        if self.mode == "msflip":
            raise EsegError("msflip averages class probabilities, it has no logits; use probabilities()",
                            field="mode")
        if self.mode == "whole":
            return self.forward(x)
        return modes.scores(self.forward, x, self.num_classes, **self.mode_kw)

    def labels(self, x: torch.Tensor, size=None) -> torch.Tensor:
        return modes.labels(self.forward, x, self.num_classes, size, **self.mode_kw)

    def probabilities(self, x: torch.Tensor, size=None) -> torch.Tensor:
        return modes.probabilities(self.forward, x, self.num_classes, size, **self.mode_kw)
