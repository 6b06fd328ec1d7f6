"""Post-processing: class logits at the head's stride -> a label map at the image's size, exactly.

The obvious order, bilinear upsampling of all C class maps to the full size and then an argmax over C,
writes and reads C full-size maps: for ESeg-Lite-S it costs more than the network. Taking the argmax at
low resolution and upsampling the labels is cheaper but *not* exact. :func:`upsample_argmax` gives the
exact result at a fraction of the cost:

a bilinearly upsampled pixel is a convex combination of its 4 source pixels, so where the 4 source
pixels share the same argmax class, that class is also the argmax of the combination (it is at least as
large as every other class in each source pixel, hence in any weighted mean of them). Only output pixels
whose source cell straddles a class boundary need their C interpolated values; everything else is a
gather of the low-resolution argmax. Boundary pixels are computed with the same weights as
``F.interpolate(mode="bilinear")``, so labels agree with upsample-then-argmax up to float rounding at
exact ties.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _source_index(in_size: int, out_size: int, align_corners: bool, device) -> tuple[torch.Tensor, ...]:
    """PyTorch's bilinear source indices (i0, i1) and weight of i1 for each output position (1-D)."""
    dst = torch.arange(out_size, device=device, dtype=torch.float32)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        scale = in_size / out_size
        src = ((dst + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.long().clamp_(max=in_size - 1)
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    lam = (src - i0).clamp_(0, 1)
    return i0, i1, lam


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear upsampling of class maps to ``size`` (what the model's own last layer does)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


def upsample_argmax(logits: torch.Tensor, size: tuple[int, int], *, align_corners: bool = False,
                    out_dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """``argmax(upsample_bilinear(logits, size), dim=1)`` without upsampling all class maps.

    ``logits``: ``(B, C, h, w)`` float; returns ``(B, H, W)`` labels of ``out_dtype`` (int32 when C > 255).
    """
    b, c, h, w = logits.shape
    H, W = int(size[0]), int(size[1])
    if out_dtype == torch.uint8 and c > 255:  # 255 is the sentinel below
        out_dtype = torch.int32
    if (h, w) == (H, W):
        return logits.argmax(1).to(out_dtype)
    dev = logits.device
    # class vectors contiguous per pixel (channels_last): the argmax over C and the boundary gathers below
    # read them in one run each; on CPU an argmax over NCHW's strided C costs about 10x more than the copy
    logits = logits.contiguous(memory_format=torch.channels_last)
    am = logits.argmax(1)  # (B, h, w), at low resolution: C times less data than at full size
    # a source cell (i, j) is "uniform" when its 4 corners (i|i+1, j|j+1, clamped) share one label
    down = torch.cat([am[:, 1:], am[:, -1:]], 1)
    right = torch.cat([am[:, :, 1:], am[:, :, -1:]], 2)
    diag = torch.cat([down[:, :, 1:], down[:, :, -1:]], 2)
    uniform = (am == down) & (am == right) & (am == diag)
    y0, y1, ly = _source_index(h, H, align_corners, dev)
    x0, x1, lx = _source_index(w, W, align_corners, dev)
    # the cell's label, or a sentinel for mixed cells; gathered to full size (columns first: fewer rows)
    sentinel = torch.iinfo(out_dtype).max if c <= torch.iinfo(out_dtype).max else -1
    code = torch.where(uniform, am, sentinel).to(out_dtype)
    labels = code.index_select(2, x0).index_select(1, y0)
    mixed = labels == sentinel
    flat = mixed.view(-1).nonzero().squeeze(1)  # output pixels on a class boundary
    if flat.numel():
        # one contiguous class vector per source pixel: (B*h*w, C)
        lg = logits.permute(0, 2, 3, 1).reshape(b * h * w, c)
        if b == 1:
            yi, base = torch.div(flat, W, rounding_mode="floor"), 0
        else:
            bi = torch.div(flat, H * W, rounding_mode="floor")
            yi, base = torch.div(flat - bi * (H * W), W, rounding_mode="floor"), bi * (h * w)
        xi = flat - torch.div(flat, W, rounding_mode="floor") * W
        ra, rb = base + y0[yi] * w, base + y1[yi] * w
        xa, xb = x0[xi], x1[xi]
        wy, wx = ly[yi].unsqueeze(1), lx[xi].unsqueeze(1)
        top = torch.lerp(lg.index_select(0, ra + xa), lg.index_select(0, ra + xb), wx)
        bot = torch.lerp(lg.index_select(0, rb + xa), lg.index_select(0, rb + xb), wx)
        labels.view(-1)[flat] = torch.lerp(top, bot, wy).argmax(1).to(out_dtype)
    return labels


def upsample_softmax(logits: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Class probabilities at ``size``: softmax over classes of the upsampled logits (the order that
    agrees with :func:`upsample_argmax`)."""
    return upsample_logits(logits.float(), size, align_corners).softmax(1)
