"""Inference modes on a normalised batch: the tensor layer under :class:`~eseg_cli.inference.Predictor` (which
takes pixels) and under training's validation (which has normalised batches already).

``whole``: one forward pass at the input size (the paper's protocol). ``slide``: ``crop`` windows every
``stride``, their logits averaged. ``msflip``: softmax averaged over ``scales`` (each whole-image, or sliding
when ``crop`` is given) and their horizontal flips.

:func:`labels` is the one way from a batch to class ids: in ``whole`` mode it takes the model's logits at the
head's stride (``forward_logits``) through the exact fast upsample + argmax of :mod:`.postprocess`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from eseg_cli.errors import EsegError
from eseg_cli.inference.postprocess import upsample_argmax
from eseg_cli.inference.precision import autocast
from eseg_cli.utils import check_finite, check_size

MODES = ("whole", "slide", "msflip")
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def check_inference(mode: str, crop=None, stride=None, scales=(1.0,), *, crop_later: bool = False) -> None:
    """Refuse inference settings that would give a score no model computed: an unknown mode, slide without a
    crop, a stride larger than the crop (the pixels between windows would be 0/0, then class 0), a crop past
    the size cap, or a scale that is not a positive finite number. ``crop_later``: slide without a crop is
    checked again once a checkpoint may give one (the Predictor takes the run's training crop)."""
    if mode not in MODES:
        raise EsegError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    if mode == "slide" and crop is None and not crop_later:
        raise EsegError("slide mode needs a crop size ('crop', HxW)", field="crop")
    if crop is not None:
        check_size(crop, "'crop'", field="crop")
        if stride is not None and (stride[0] > crop[0] or stride[1] > crop[1]):
            raise EsegError(f"'stride' {stride[0]}x{stride[1]} is larger than 'crop' {crop[0]}x{crop[1]}: the "
                            "pixels between two windows would get no score; give a stride of at most the crop",
                            field="stride")
    if mode == "msflip":
        if not scales:
            raise EsegError("msflip needs at least one scale ('scales')", field="scales")
        for v in scales:
            check_finite(v, "'scales'", field="scales")
            if v <= 0:
                raise EsegError(f"'scales' must be positive numbers, got {v!r}", field="scales")


def forward(fn, x: torch.Tensor, amp: str | None) -> torch.Tensor:
    """``fn(x)`` under the autocast of ``amp``, as float32."""
    with autocast(x.device, amp):
        return fn(x).float()


def slide_logits(model: nn.Module, x: torch.Tensor, num_classes: int, crop: tuple[int, int],
                 stride: tuple[int, int], amp: str | None = None) -> torch.Tensor:
    """Average the logits of overlapping ``crop`` windows moved by ``stride`` (windows clipped to the image)."""
    b, _, h, w = x.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    sh, sw = stride
    rows = max(math.ceil((h - ch) / sh), 0) + 1
    cols = max(math.ceil((w - cw) / sw), 0) + 1
    out = x.new_zeros((b, num_classes, h, w))
    count = x.new_zeros((1, 1, h, w))
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * sh, h - ch)
            x0 = min(c * sw, w - cw)
            out[:, :, y0:y0 + ch, x0:x0 + cw] += forward(model, x[:, :, y0:y0 + ch, x0:x0 + cw], amp)
            count[:, :, y0:y0 + ch, x0:x0 + cw] += 1
    if not bool(count.all()):  # unreachable with check_inference's stride <= crop; never a silent 0/0 score
        raise EsegError(f"the sliding window (crop {crop[0]}x{crop[1]}, stride {sh}x{sw}) leaves pixels of a "
                        f"{h}x{w} image uncovered; use a stride of at most the crop", field="stride")
    return out / count


@torch.no_grad()
def scores(model: nn.Module, x: torch.Tensor, num_classes: int, *, mode: str = "whole",
           crop: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
           scales: tuple[float, ...] = DEFAULT_SCALES, flip: bool = True, amp: str | None = None) -> torch.Tensor:
    """Class scores ``(B, C, H, W)`` of a normalised batch ``x``: logits (``whole``, ``slide``) or the sum of the
    softmaxes over scales and flips (``msflip``)."""
    check_inference(mode, crop, stride, scales)

    def one(inp):
        if crop is not None and mode in ("slide", "msflip"):
            st = stride or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
            return slide_logits(model, inp, num_classes, crop, st, amp)
        return forward(model, inp, amp)

    if mode != "msflip":
        return one(x)
    h, w = x.shape[-2:]
    total = x.new_zeros((x.shape[0], num_classes, h, w))
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        check_size(size, f"the {h}x{w} image at msflip scale {s:g} ('scales')", field="scales")
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if size != (h, w) else x
        variants = [xs, xs.flip(-1)] if flip else [xs]
        for i, v in enumerate(variants):
            logits = one(v)
            if i == 1:
                logits = logits.flip(-1)
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            total += logits.softmax(1)
    return total


def compiled_model(model) -> bool:
    """Whether ``model`` was prepared compiled (``compile``) or int8: its post-processing may compile as well
    (:func:`~.postprocess.argmax_rows`), needing nothing the model did not."""
    prepared = getattr(model, "prepared", None) or {}
    return bool(prepared.get("compiled") or prepared.get("int8"))


def _resized(t: torch.Tensor, size) -> torch.Tensor:
    """Scores at ``size`` (an image resized for the model, e.g. ``val_resize``: predictions go back to the
    label's size, never the reverse)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor, num_classes: int, size=None, *, mode: str = "whole",
                  scales: tuple[float, ...] = DEFAULT_SCALES, flip: bool = True, **kw) -> torch.Tensor:
    """``(B, C, H, W)`` class probabilities at ``size`` (default: the input's): the softmax of the logits, or
    in ``msflip`` the mean of the softmaxes."""
    s = scores(model, x, num_classes, mode=mode, scales=scales, flip=flip, **kw)
    p = s / (len(scales) * (2 if flip else 1)) if mode == "msflip" else s.softmax(1)
    return _resized(p, size or x.shape[-2:])


@torch.no_grad()
def labels(model: nn.Module, x: torch.Tensor, num_classes: int, size=None, *, mode: str = "whole",
           amp: str | None = None, out_dtype: torch.dtype = torch.uint8, **kw) -> torch.Tensor:
    """``(B, H, W)`` class ids at ``size`` (default: the input's); ``out_dtype`` widens to int32 past 255
    classes.

    The fast path: in ``whole`` mode, a model with ``forward_logits`` (this project's) gives its logits at the
    head's stride and :func:`~.postprocess.upsample_argmax` turns them into labels exactly, without upsampling
    every class map (not on XLA, where the boundary pixels' data-dependent shapes would recompile every batch).
    A compiled or int8 model's labels take their argmaxes through a compiled kernel too (the same labels).
    """
    size = tuple(size or x.shape[-2:])
    if mode == "whole" and hasattr(model, "forward_logits") and x.device.type != "xla" and size == x.shape[-2:]:
        return upsample_argmax(forward(model.forward_logits, x, amp), size, out_dtype=out_dtype,
                               compiled=compiled_model(model))
    idx = _resized(scores(model, x, num_classes, mode=mode, amp=amp, **kw), size).argmax(1)
    if out_dtype == torch.uint8 and num_classes > 255:
        out_dtype = torch.int32
    return idx.to(out_dtype)
