"""``Predictor``: a trained model as a function from images to label maps.

>>> from eseg_cli import Predictor
>>> p = Predictor("runs/lite-s-cityscapes-20260101-120000")   # a run folder, a .pt file or a built model
>>> mask = p.predict("frame.png")                             # HxW uint8 trainIds at the image's size

The model is prepared once (batch norm folded, fusion weights frozen, channels_last where faster, see
:mod:`.prepare`); images are normalised as in training; the logits at the head's stride go through the
exact, fast upsample-and-argmax of :mod:`.postprocess`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eseg_cli.engine.precision import amp_dtype, autocast
from eseg_cli.errors import EsegError
from eseg_cli.inference.postprocess import upsample_argmax, upsample_logits
from eseg_cli.inference.prepare import prepare_model


def read_image(image) -> np.ndarray:
    """A path, a PIL image or an HxWx3 uint8 array -> a contiguous HxWx3 uint8 RGB array (files and PIL images
    upright and 16-bit data scaled, as :mod:`eseg_cli.data.imageio` reads every image)."""
    from eseg_cli.data.imageio import read_rgb, to_rgb

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise EsegError(f"image {path} does not exist")
        return read_rgb(path)
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            return to_rgb(image)
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise EsegError(f"an image array must be HxWx3 (RGB), got shape {image.shape}")
        if image.dtype != np.uint8:
            raise EsegError(f"an image array must be uint8 (0..255), got {image.dtype}")
        if min(image.shape[:2]) < 1:
            raise EsegError(f"an image array must not be empty, got shape {image.shape}")
        return np.ascontiguousarray(image)
    raise EsegError(f"expected an image path, a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")


def normalization_constants(mean, std, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of shape ``(1, 3, 1, 1)`` such that ``pixel * scale + shift`` is ``(pixel / 255 - mean)
    / std`` for 0..255 pixels."""
    scale = torch.tensor([1 / (255.0 * v) for v in std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([-a / b for a, b in zip(mean, std)], device=device).view(1, 3, 1, 1)
    return scale, shift


def normalize_uint8(arr: np.ndarray, scale: torch.Tensor, shift: torch.Tensor, device="cpu",
                    channels_last: bool = True) -> torch.Tensor:
    """``(B,)HxWx3`` uint8 -> the normalised ``(B, 3, H, W)`` float batch on ``device``, in one pass (one
    ``addcmul`` from the uint8 pixels; the NHWC buffer seen as NCHW is channels_last already)."""
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
        from eseg_cli.data.datasets import dataset_class

        try:
            cls = dataset_class(dataset)
            names = names or list(cls.classes)
            palette = list(cls.palette)
        except EsegError:
            pass
    if len(names) != num_classes:
        names = [f"class{i}" for i in range(num_classes)]
    if len(palette) != num_classes:
        from eseg_cli.data.datasets import _auto_palette

        palette = _auto_palette(num_classes)
    return names, [tuple(int(v) for v in c) for c in palette], dataset


def normalization(ckpt: dict | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (of 0..1 pixels) a model was trained with: those its ``model_config`` records (they follow
    its pretrained encoder weights, e.g. 0.5/0.5 for TF-ported Lite weights), else ImageNet's."""
    from eseg_cli.models.pretrained import model_normalization

    return model_normalization((ckpt or {}).get("model_config"))


def resolve_checkpoint(checkpoint, use_ema: bool = True) -> tuple[nn.Module, dict, str]:
    """A run folder, a checkpoint file or a built model -> ``(model, checkpoint dict, source)``."""
    if isinstance(checkpoint, nn.Module):
        ckpt = {"config": {}, "model_config": getattr(checkpoint, "config", None)}
        return checkpoint, ckpt, type(checkpoint).__name__
    from eseg_cli.engine.checkpoint import load_model

    model, ckpt = load_model(checkpoint, map_location="cpu", use_ema=use_ema)
    return model, ckpt, str(checkpoint)


class BasePredictor:
    """The image API shared by the PyTorch :class:`Predictor` and the ONNX Runtime one: subclasses give
    ``num_classes``, ``class_names``, ``palette``, ``mean``/``std``, ``device``, ``channels_last`` and
    implement :meth:`logits` and :meth:`labels` for a normalised batch."""

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

    def to_tensor(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """HxWx3 uint8 array(s) of one size -> the normalised ``(B, 3, H, W)`` float batch on the device."""
        arr = np.stack(images) if not isinstance(images, np.ndarray) else images
        return normalize_uint8(arr, self._scale, self._shift, self.device, self.channels_last)

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def labels(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, image) -> np.ndarray:
        """Class ids (trainIds for Cityscapes) of one image (path, PIL image or HxWx3 uint8) at its size."""
        return self.labels(self.to_tensor(read_image(image)))[0].cpu().numpy()

    def predict_proba(self, image) -> np.ndarray:
        """``CxHxW`` float32 class probabilities at the image's size (softmax of the upsampled logits)."""
        x = self.to_tensor(read_image(image))
        return self.logits(x)[0].softmax(0).cpu().numpy()

    def labels_and_confidence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels and the winning class's probability (``(B, H, W)`` each) from the full-size logits."""
        prob, idx = self.logits(x).softmax(1).max(1)
        return idx.to(torch.uint8 if self.num_classes <= 255 else torch.int32), prob

    def predict_batch(self, images: Iterable, batch_size: int = 8) -> list[np.ndarray]:
        """:meth:`predict` for many images; consecutive images of the same size run as one batch."""
        if batch_size < 1:
            raise EsegError(f"batch_size must be >= 1, got {batch_size}")
        out: list[np.ndarray] = []
        group: list[np.ndarray] = []

        def flush():
            if group:
                out.extend(self.labels(self.to_tensor(group)).cpu().numpy())
                group.clear()

        for img in images:
            arr = read_image(img)
            if group and (arr.shape != group[0].shape or len(group) >= batch_size):
                flush()
            group.append(arr)
        flush()
        return out


class Predictor(BasePredictor):
    """Run a trained segmentation model on images of any size.

    Args:
        checkpoint: a run folder (its ``checkpoints/best.pt``), a checkpoint file, or a built model
            (``build_model(...)`` or any module mapping a normalised ``(B, 3, H, W)`` batch to logits).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda[:N]``.
        fold: fold batch norm and freeze the fusion weights (exact; default on).
        channels_last: ``None`` picks the faster layout for the device.
        compile: ``torch.compile`` the prepared model (first call per image size compiles).
        amp: ``None`` (fp32, exact), ``"bf16"`` or ``"fp16"`` autocast.
        use_ema: use the checkpoint's EMA weights when it has them.
        mean, std: override the normalisation (0..1 pixel units); default: the checkpoint's.
    """

    def __init__(self, checkpoint, device: str | torch.device = "auto", *, fold: bool = True,
                 channels_last: bool | None = None, compile: bool = False, amp: str | None = None,
                 use_ema: bool = True, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        from eseg_cli.engine.distributed import resolve_device

        self.device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
        model, ckpt, self.source = resolve_checkpoint(checkpoint, use_ema)
        self.checkpoint = {k: ckpt.get(k) for k in ("config", "model_config", "step", "classes")}
        self.num_classes = int(getattr(model, "num_classes", 0) or ckpt.get("num_classes") or 0)
        self.amp = amp
        amp_dtype(amp, self.device)  # refuses fp16 off CUDA, as training does
        self.model = prepare_model(model, device=self.device, fold=fold, channels_last=channels_last, compile=compile)
        self.channels_last = self.model.prepared["channels_last"]
        m, s = normalization(ckpt)
        self._set_normalization(mean or m, std or s)
        # models of this project give logits at the head's stride; others (peers) at the input size
        self._has_low_res = hasattr(self.model, "forward_logits")
        self.class_names, self.palette, self.dataset = checkpoint_classes(ckpt, self.num_classes or 0)

    def __repr__(self) -> str:
        return (f"Predictor({self.source}, device={self.device}, classes={self.num_classes}, "
                f"prepared={self.model.prepared}, amp={self.amp})")

    @torch.inference_mode()
    def low_res_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the head's stride (or at the input size for models without ``forward_logits``)."""
        with autocast(self.device, self.amp):
            out = self.model.forward_logits(x) if self._has_low_res else self.model(x)
        return out.float()

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input size for a normalised batch, as the training model's ``forward``."""
        return upsample_logits(self.low_res_logits(x), tuple(x.shape[-2:]))

    @torch.inference_mode()
    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` class ids (uint8 for <= 255 classes) for a normalised batch."""
        return upsample_argmax(self.low_res_logits(x), tuple(x.shape[-2:]))
