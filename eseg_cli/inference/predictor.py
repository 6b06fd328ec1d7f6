"""``Predictor``: a trained model as a function from images to label maps, the one way from pixels to predictions
(``eseg predict``, ``eseg eval``, ``eseg pseudo-label`` and the report's sample predictions all use it).

>>> from eseg_cli import Predictor
>>> p = Predictor("runs/lite-s-cityscapes-20260101-120000")   # a run folder, a .pt file or a built model
>>> mask = p.predict("frame.png")                             # HxW uint8 trainIds at the image's size
>>> probs = Predictor("best.pt", mode="msflip", scales=(0.75, 1.0, 1.25)).predict_proba("frame.png")

The model is prepared once (batch norm folded, fusion weights frozen, channels_last where faster, see
:mod:`.prepare`); images are normalised with the mean/std recorded in the checkpoint (:func:`normalize_uint8`,
the one normalisation of inference); the inference modes and the fast path are :mod:`.modes`.

Two layers: the image API (:meth:`~BasePredictor.predict`, :meth:`~BasePredictor.predict_proba`,
:meth:`~BasePredictor.predict_batch`: paths, PIL images or uint8 arrays in, numpy out) over the tensor layer
(:meth:`~BasePredictor.to_tensor`, then :meth:`~BasePredictor.labels` / :meth:`~BasePredictor.probabilities`
/ :meth:`~BasePredictor.logits` on the normalised batch), which the file writers and the eval loop use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from eseg_cli.data.datasets import _auto_palette, dataset_class
from eseg_cli.data.imageio import as_rgb
from eseg_cli.errors import EsegError
from eseg_cli.inference import modes
from eseg_cli.inference.allocator import keep_freed_memory
from eseg_cli.inference.int8 import (
    MIN_AGREEMENT,
    Int8Model,
    check_min_agreement,
    coarse_to_fine_heads,
    quantize_int8,
    run_calibration_images,
)
from eseg_cli.inference.postprocess import upsample_logits
from eseg_cli.inference.precision import amp_dtype
from eseg_cli.inference.prepare import prepare_model
from eseg_cli.inference.runtime import load_model, resolve_device
from eseg_cli.models.heads import FusionHead
from eseg_cli.models.pretrained import model_normalization


def normalization_constants(mean, std, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of shape ``(1, 3, 1, 1)`` such that ``pixel * scale + shift`` is ``(pixel / 255 - mean)
    / std`` for 0..255 pixels."""
    scale = torch.tensor([1 / (255.0 * v) for v in std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([-a / b for a, b in zip(mean, std)], device=device).view(1, 3, 1, 1)
    return scale, shift


def normalize_uint8(arr: np.ndarray | torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, device="cpu",
                    channels_last: bool = True) -> torch.Tensor:
    """``(B,)HxWx3`` uint8 array (or a ``(B, 3, H, W)`` uint8 tensor, as a data loader gives) -> the normalised
    ``(B, 3, H, W)`` float batch on ``device``, in one pass (one ``addcmul`` from the uint8 pixels; the NHWC
    buffer seen as NCHW is channels_last already)."""
    if isinstance(arr, torch.Tensor):
        t = arr.to(device, non_blocking=True)
        if channels_last and t.ndim == 4 and not t.is_contiguous(memory_format=torch.channels_last):
            # written channels_last straight from the NCHW pixels: one pass, not a uint8 copy and then the
            # addcmul (3.4 against 6.1 ms at 1024x2048 on 2 cores), the same values
            out = torch.empty(t.shape, dtype=scale.dtype, device=t.device, memory_format=torch.channels_last)
            return torch.addcmul(shift, t, scale, out=out)
    else:
        if arr.ndim == 3:
            arr = arr[None]
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(device, non_blocking=True).permute(0, 3, 1, 2)
    x = torch.addcmul(shift, t, scale)
    return x if channels_last else x.contiguous()


def checkpoint_classes(ckpt: dict, num_classes: int) -> tuple[list[str], list[tuple[int, int, int]], str | None]:
    """Class names, palette and dataset name of a checkpoint (or numbered classes for a bare model)."""
    cfg = ckpt.get("config") or {}
    dataset = cfg.get("dataset")
    names = list(ckpt.get("classes") or [])
    palette: list = []
    if dataset:
        try:
            cls = dataset_class(dataset)
            names = names or list(cls.classes)
            palette = list(cls.palette)
        except EsegError:
            pass
    if len(names) != num_classes:
        names = [f"class{i}" for i in range(num_classes)]
    if len(palette) != num_classes:
        palette = _auto_palette(num_classes)
    return names, [tuple(int(v) for v in c) for c in palette], dataset


def normalization(ckpt: dict | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (of 0..1 pixels) a model was trained with: those its ``model_config`` records (they follow
    its pretrained encoder weights, e.g. 0.5/0.5 for TF-ported Lite weights), else ImageNet's."""
    return model_normalization((ckpt or {}).get("model_config"))


def model_and_checkpoint(checkpoint, use_ema: bool = True) -> tuple[nn.Module, dict, str]:
    """A run folder, a checkpoint file or a built model -> ``(model, checkpoint dict, source)``."""
    if isinstance(checkpoint, nn.Module):
        ckpt = {"config": {}, "model_config": getattr(checkpoint, "config", None)}
        return checkpoint, ckpt, type(checkpoint).__name__
    model, ckpt = load_model(checkpoint, map_location="cpu", use_ema=use_ema)
    return model, ckpt, str(checkpoint)


class BasePredictor:
    """The image API shared by the PyTorch :class:`Predictor` and the ONNX Runtime one: subclasses give
    ``num_classes``, ``class_names``, ``palette``, ``mean``/``std``, ``device``, ``channels_last`` and implement
    the tensor layer's :meth:`logits` (and, when they have faster ones, :meth:`labels` / :meth:`probabilities`)
    for a normalised batch."""

    device: torch.device = torch.device("cpu")
    channels_last: bool = False
    num_classes: int = 0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def _set_normalization(self, mean, std) -> None:
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise EsegError(f"mean and std need 3 values each (std > 0), got {self.mean} and {self.std}")
        self._scale, self._shift = normalization_constants(self.mean, self.std, self.device)

    # -- the image API: pixels in, numpy out ----------------------------------------------------------------

    def predict(self, image) -> np.ndarray:
        """Class ids (trainIds for Cityscapes) of one image (path, PIL image or HxWx3 uint8) at its size."""
        return self.labels(self.to_tensor(as_rgb(image)))[0].cpu().numpy()

    def predict_proba(self, image) -> np.ndarray:
        """``CxHxW`` float32 class probabilities at the image's size."""
        return self.probabilities(self.to_tensor(as_rgb(image)))[0].cpu().numpy()

    def predict_batch(self, images: Iterable, batch_size: int = 8) -> list[np.ndarray]:
        """:meth:`predict` for many images; consecutive images of the same size run as one batch."""
        if batch_size < 1:
            raise EsegError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
        out: list[np.ndarray] = []
        group: list[np.ndarray] = []

        def flush():
            if group:
                out.extend(self.labels(self.to_tensor(group)).cpu().numpy())
                group.clear()

        for img in images:
            arr = as_rgb(img)
            if group and (arr.shape != group[0].shape or len(group) >= batch_size):
                flush()
            group.append(arr)
        flush()
        return out

    # -- the tensor layer: a normalised (B, 3, H, W) batch --------------------------------------------------

    def to_tensor(self, images: np.ndarray | Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
        """HxWx3 uint8 array(s) of one size, or a ``(B, 3, H, W)`` uint8 tensor -> the normalised ``(B, 3, H, W)``
        float batch on the device (:func:`normalize_uint8` with the model's mean/std)."""
        arr = images if isinstance(images, (np.ndarray, torch.Tensor)) else np.stack(images)
        return normalize_uint8(arr, self._scale, self._shift, self.device, self.channels_last)

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``(B, C, H, W)`` logits at the input size."""
        raise NotImplementedError

    def labels(self, x: torch.Tensor, size=None) -> torch.Tensor:
        """``(B, H, W)`` class ids at ``size`` (default: the input's; uint8 for <= 255 classes)."""
        lg = upsample_logits(self.logits(x), tuple(size or x.shape[-2:]))
        return lg.argmax(1).to(torch.uint8 if self.num_classes <= 255 else torch.int32)

    def probabilities(self, x: torch.Tensor, size=None) -> torch.Tensor:
        """``(B, C, H, W)`` class probabilities at ``size`` (default: the input's)."""
        return upsample_logits(self.logits(x), tuple(size or x.shape[-2:])).softmax(1)

    def labels_and_confidence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels and the winning class's probability (``(B, H, W)`` each)."""
        prob, idx = self.probabilities(x).max(1)
        return idx.to(torch.uint8 if self.num_classes <= 255 else torch.int32), prob


#: training images ``Predictor(quantize="int8")`` calibrates on by default
DEFAULT_CALIBRATION = 16
QUANTIZE = ("int8",)


def check_quantize(quantize: str | None, device: torch.device, compile: bool, amp: str | None) -> None:
    """Refuse a quantisation this Predictor does not offer, or one combined with settings it replaces."""
    if quantize is None:
        return
    if quantize not in QUANTIZE:
        raise EsegError(f"'quantize' must be one of {', '.join(QUANTIZE)} (or none), got {quantize!r}",
                        field="quantize")
    if device.type != "cpu":
        raise EsegError(f"int8 runs on CPU (oneDNN), not {device}; use device cpu", field=("quantize", "device"))
    if compile or amp:
        raise EsegError("int8 compiles its own graph and runs in int8: drop 'compile' and 'amp'",
                        field=("quantize", "compile", "amp"))


#: how an ESeg head sums its levels at inference (``Predictor(head=...)``, ``eseg predict --head``)
HEADS = ("exact", "coarse-to-fine")


def resolve_head(head: str | None, quantize: str | None, model: nn.Module) -> str:
    """``head`` checked, or its default: ``coarse-to-fine`` for an ESeg model in int8 (part of int8's recipe),
    ``exact`` otherwise.
    Refuses an unknown value, and ``coarse-to-fine`` for a model without an ESeg head."""
    eseg_head = any(isinstance(m, FusionHead) for m in model.modules())
    if head is None:
        return "coarse-to-fine" if quantize and eseg_head else "exact"
    if head not in HEADS:
        raise EsegError(f"'head' must be one of {', '.join(HEADS)}, got {head!r}", field="head")
    if head == "coarse-to-fine" and not eseg_head:
        raise EsegError(f"'head' coarse-to-fine sums an ESeg head's levels; {type(model).__name__} has no ESeg "
                        "head: drop it", field="head")
    return head


class LogitsOf(nn.Module):
    """A segmentation model as ``x -> forward_logits(x)`` (its logits at the head's stride), to be exported."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_logits(x)


class Int8Segmentor:
    """An :class:`~.int8.Int8Model` of a model's ``forward_logits`` with the model's interface: ``forward_logits``
    (the fast path of :func:`.modes.labels`) and ``__call__`` (logits upsampled to the input size)."""

    def __init__(self, int8: Int8Model, prepared: dict):
        self.int8 = int8
        self.prepared = {**prepared, "channels_last": True, "int8": int8.calibration}

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.int8(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_logits(self.int8(x), tuple(x.shape[-2:]))


class Predictor(BasePredictor):
    """Run a trained segmentation model on images of any size.

    Args:
        checkpoint: a run folder (its ``checkpoints/best.pt``), a checkpoint file, or a built model
            (``build_model(...)`` or any module mapping a normalised ``(B, 3, H, W)`` batch to logits).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda[:N]``.
        mode: ``whole`` (one pass at the image's size, the paper's protocol), ``slide`` (``crop`` windows every
            ``stride``, default 2/3 of the crop) or ``msflip`` (softmax averaged over ``scales`` and, with
            ``flip``, their horizontal flips; sliding windows when ``crop`` is given). See :mod:`.modes`.
            ``slide`` without a ``crop`` takes the run's training crop from the checkpoint's config (as mmseg
            takes it from its config); a built model has none, and then needs ``crop``.
        fold: fold batch norm and freeze the fusion weights (exact; default on).
        channels_last: ``None`` picks the faster layout for the device.
        compile: ``torch.compile`` the prepared model (first call per image size compiles).
        compile_dynamic: with ``compile``, graphs with symbolic sizes, each for a range of image sizes (what
            ``eseg predict --compile`` uses for folders of mixed sizes; see ``compile_inference``).
        amp: ``None`` (fp32, exact), ``"bf16"`` or ``"fp16"`` autocast.
        quantize: ``"int8"``: the model quantised to int8 on CPU (:func:`.int8.quantize_int8`: PyTorch 2 export
            quantisation, compiled; each new image size calibrates and compiles once; an ESeg head sums its
            levels coarse to fine, :func:`.int8.coarse_to_fine_heads`). Not exact.
        head: how an ESeg head sums its levels: ``"exact"`` (each level upsampled to P2's size, as trained) or
            ``"coarse-to-fine"`` (each level upsampled once onto the next finer one: faster, not exact;
            :func:`.int8.coarse_to_fine_heads`). Default: coarse-to-fine with ``quantize``, exact otherwise.
        calibrate: with ``quantize``: the number of training images (of the run's own dataset, through its own
            preprocessing) to calibrate on, or the calibration images themselves (paths, PIL images, uint8
            HxWx3 arrays or uint8 ``(B, 3, H, W)`` tensors, of one size).
        int8_min_agreement: with ``quantize``: the least share of pixels to which int8 must give the float model's
            class on the first image of each size (one float forward per size), or that size is refused
            (:class:`.int8.Int8Inaccurate`; default :data:`.int8.MIN_AGREEMENT`); what it found is in
            ``model.int8.report``.
        use_ema: use the checkpoint's EMA weights when it has them.
        mean, std: override the normalisation (0..1 pixel units); default: the checkpoint's.
    """

    def __init__(self, checkpoint, device: str | torch.device = "auto", *, mode: str = "whole",
                 crop: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
                 scales: Sequence[float] = modes.DEFAULT_SCALES, flip: bool = True, fold: bool = True,
                 channels_last: bool | None = None, compile: bool = False, compile_dynamic: bool = False,
                 amp: str | None = None,
                 use_ema: bool = True, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 quantize: str | None = None, calibrate: int | Sequence = DEFAULT_CALIBRATION,
                 head: str | None = None, int8_min_agreement: float | None = None):
        # settings are refused before a checkpoint is read; slide's crop may still come from the checkpoint
        modes.check_inference(mode, crop, stride, tuple(scales), crop_later=True)
        self.device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
        if self.device.type == "cpu":
            keep_freed_memory()  # exact; each image reuses the last one's memory (inference/allocator.py)
        model, ckpt, self.source = model_and_checkpoint(checkpoint, use_ema)
        if mode == "slide" and crop is None:  # the run's training crop; refused where none is recorded
            crop = (ckpt.get("config") or {}).get("crop_size")
            modes.check_inference(mode, tuple(crop) if crop else None, stride, tuple(scales))
        self.mode_kw = {"mode": mode, "crop": tuple(crop) if crop else None,
                        "stride": tuple(stride) if stride else None, "scales": tuple(scales), "flip": bool(flip)}
        self.checkpoint = {k: ckpt.get(k) for k in ("config", "model_config", "step", "classes", "data_root")}
        self.num_classes = int(getattr(model, "num_classes", 0) or ckpt.get("num_classes") or 0)
        self.amp = amp
        amp_dtype(amp, self.device)  # refuses fp16 off CUDA, as training does
        check_quantize(quantize, self.device, compile, amp)
        if int8_min_agreement is not None:  # refused now, before calibration images are read
            check_min_agreement(int8_min_agreement)
            if not quantize:
                raise EsegError("'int8_min_agreement' sets what quantize='int8' must agree on; add quantize='int8', "
                                "or drop it", field="int8_min_agreement")
        self.quantize = quantize
        self.head = resolve_head(head, quantize, model)
        m, s = normalization(ckpt)
        self._set_normalization(mean or m, std or s)
        if quantize:
            prepared = prepare_model(model, device=self.device, fold=fold, channels_last=False)
            images = (run_calibration_images(ckpt, calibrate) if isinstance(calibrate, int)
                      else [im if isinstance(im, torch.Tensor) else as_rgb(im) for im in calibrate])
            tensors = [self.to_tensor(im).contiguous() for im in images]
            self.model = Int8Segmentor(quantize_int8(LogitsOf(prepared), tensors,
                                                     coarse_to_fine_head=self.head == "coarse-to-fine",
                                                     min_agreement=MIN_AGREEMENT if int8_min_agreement is None
                                                     else int8_min_agreement),
                                       prepared.prepared)
        else:
            self.model = prepare_model(model, device=self.device, fold=fold, channels_last=channels_last,
                                       compile=compile, compile_dynamic=compile_dynamic)
            if self.head == "coarse-to-fine":  # on the prepared copy (a built model passed in stays as it was),
                coarse_to_fine_heads(self.model)  # before a compiled one's first call traces it
        self.channels_last = self.model.prepared["channels_last"]
        self.class_names, self.palette, self.dataset = checkpoint_classes(ckpt, self.num_classes or 0)

    @property
    def mode(self) -> str:
        return self.mode_kw["mode"]

    def __repr__(self) -> str:
        return (f"Predictor({self.source}, device={self.device}, mode={self.mode}, classes={self.num_classes}, "
                f"prepared={self.model.prepared}, amp={self.amp}, quantize={self.quantize}, head={self.head})")

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input size for a normalised batch, as the training model's ``forward`` (``whole``) or
        averaged over windows (``slide``); ``msflip`` averages probabilities and has none."""
        if self.mode == "msflip":
            raise EsegError("msflip averages class probabilities, it has no logits; use probabilities()",
                            field="mode")
        if self.mode == "whole":
            return modes.forward(self.model, x, self.amp)
        return modes.scores(self.model, x, self.num_classes, amp=self.amp, **self.mode_kw)

    @torch.inference_mode()
    def labels(self, x: torch.Tensor, size=None) -> torch.Tensor:
        """``(B, H, W)`` class ids at ``size`` (default: the input's; uint8 for <= 255 classes), through
        :func:`.modes.labels` (in ``whole`` mode the fast path)."""
        return modes.labels(self.model, x, self.num_classes, size, amp=self.amp, **self.mode_kw)

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor, size=None) -> torch.Tensor:
        """``(B, C, H, W)`` class probabilities at ``size`` (default: the input's)."""
        return modes.probabilities(self.model, x, self.num_classes, size, amp=self.amp, **self.mode_kw)
