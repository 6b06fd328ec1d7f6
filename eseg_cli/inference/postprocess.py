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

import functools

import torch
import torch.nn.functional as F


def _source_index(in_size: int, out_size: int, align_corners: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's bilinear source index i0 (the other is ``min(i0 + 1, in_size - 1)``) and the weight of the other,
    for each output position (1-D)."""
    dst = torch.arange(out_size, device=device, dtype=torch.float32)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        scale = in_size / out_size
        src = ((dst + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.long().clamp_(max=in_size - 1)
    lam = (src - i0).clamp_(0, 1)
    return i0, lam


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear upsampling of class maps to ``size`` (what the model's own last layer does)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


def argmax_rows(t: torch.Tensor, out_dtype: torch.dtype = torch.int64, *, compiled: bool = False) -> torch.Tensor:
    """``t.argmax(1)`` of a 2-D ``(N, C)`` tensor (one class vector per row), as ``out_dtype``: the same indices
    (the first maximum; a NaN counts as the maximum, as torch's argmax counts it).

    ``compiled``: through an inductor kernel (:func:`_first_max`, compiled once for every ``N``) instead of ATen's
    argmax, whose loop over a short innermost dimension is scalar and branchy. On 2 cores: 131 072 x 19 random
    scores 1.2 against 3.3 ms, 480 000 x 19 (the boundary cells' pixels of a trained map) 4.5 against 12 ms; on
    ESeg-Lite-S's own smooth 256x512 logits 1.0 against 1.4 ms; the whole post-processing of the quick-start
    model's map at 1024x2048 12.7 against 15.1 ms (``reports/benchmarks/README.md``). Only for callers that
    compile anyway (a compiled or int8 model: the first call compiles this kernel too, a few seconds, with the
    same C++ compiler).
    """
    if not compiled or t.shape[0] == 0:
        return t.argmax(1).to(out_dtype)
    index, nan = _compiled_first_max()(t, out_dtype)
    if bool(nan.any()):  # the kernel skips NaNs; those rows take torch's own answer (the first NaN)
        index[nan] = t[nan].argmax(1).to(out_dtype)
    return index


def _first_max(t: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The index of each row's first maximum, ignoring NaNs, and whether the row holds a NaN: a running maximum
    over the C columns, which inductor vectorises across rows."""
    best = t[:, 0]
    index = torch.zeros(best.shape, dtype=out_dtype, device=t.device)
    nan = best != best
    for c in range(1, t.shape[1]):
        v = t[:, c]
        take = v > best  # strictly greater: a tie keeps the first
        nan = nan | (v != v)
        best = torch.where(take, v, best)
        index = torch.where(take, c, index).to(out_dtype)
    return index, nan


@functools.cache
def _compiled_first_max():
    from eseg_cli.inference.prepare import compiled  # prepare imports nothing of this module's; only when used

    return compiled(_first_max, freezing=False, dynamic=True)


def upsample_argmax(logits: torch.Tensor, size: tuple[int, int], *, align_corners: bool = False,
                    out_dtype: torch.dtype = torch.uint8, compiled: bool = False) -> torch.Tensor:
    """``argmax(upsample_bilinear(logits, size), dim=1)`` without upsampling all class maps.

    ``logits``: ``(B, C, h, w)`` float; returns ``(B, H, W)`` labels of ``out_dtype`` (int32 when C > 255).
    ``compiled``: the argmaxes over classes through an inductor kernel (:func:`argmax_rows`; the same labels).

    Work is done per source *cell* (the 2x2 source pixels that an output pixel interpolates), never per output
    pixel: the low-resolution argmax is expanded to full size by two gathers, and only the cells whose corners
    disagree are interpolated, each as one block of output pixels (its rows x its columns) in batched tensor ops.
    """
    b, c, h, w = logits.shape
    H, W = int(size[0]), int(size[1])
    if out_dtype == torch.uint8 and c > 255:
        out_dtype = torch.int32
    dev = logits.device
    # class vectors contiguous per pixel (channels_last): the argmax over C and the corner gathers below
    # read them in one run each; on CPU an argmax over NCHW's strided C costs about 10x more than the copy
    logits = logits.contiguous(memory_format=torch.channels_last)
    lg = logits.permute(0, 2, 3, 1).reshape(b * h * w, c)  # one contiguous class vector per source pixel
    # (B, h, w), at low resolution: C times less data than at full size
    am = argmax_rows(lg, out_dtype, compiled=compiled).view(b, h, w)
    if (h, w) == (H, W):
        return am
    y0, ly = _source_index(h, H, align_corners, dev)
    x0, lx = _source_index(w, W, align_corners, dev)
    # every output pixel takes its cell's low-resolution label (columns first: fewer rows); mixed cells are
    # overwritten below
    labels = am.index_select(2, x0).index_select(1, y0)
    # a source cell (i, j) is "mixed" when its 4 corners (i|i+1, j|j+1, clamped) do not share one label, that is
    # when one of its 4 edges joins two labels (at the last row or column the clamped edges are the others)
    across = am[:, :, :-1] != am[:, :, 1:]  # (B, h, w - 1): the top edge of cell (i, j)
    down = am[:, :-1] != am[:, 1:]  # (B, h - 1, w): its left edge
    mixed = torch.zeros_like(am, dtype=torch.bool)
    mixed[:, :, :-1] |= across
    mixed[:, :-1] |= down
    mixed[:, :-1, :-1] |= across[:, 1:] | down[:, :, 1:]  # bottom and right edges
    if not bool(mixed.any()):
        return labels
    # output rows (columns) grouped by source row (column): blocks of at most ceil(H / h) rows, a longer run
    # (the clamped border) split in two, a shorter one padded by repeating its last row (same value rewritten)
    gy_src, gy_pos = _groups(y0, -(-H // h))
    gx_src, gx_pos = _groups(x0, -(-W // w))
    blocks = mixed.index_select(1, gy_src).index_select(2, gx_src).nonzero()  # (M, 3): batch, row group, col group
    rows_per, cols_per = gy_pos.shape[1], gx_pos.shape[1]
    step = max(1, _BLOCK_ELEMENTS // (rows_per * cols_per * c))
    flat = labels.view(-1)
    for start in range(0, blocks.shape[0], step):
        bi, gy, gx = blocks[start:start + step].unbind(1)
        i, j = gy_src[gy], gx_src[gx]
        ra, rb = bi * (h * w) + i * w, bi * (h * w) + (i + 1).clamp_(max=h - 1) * w
        xa, xb = j, (j + 1).clamp_(max=w - 1)
        rows, cols = gy_pos[gy], gx_pos[gx]  # (m, rows_per), (m, cols_per)
        wx = lx[cols].unsqueeze(2)  # (m, cols_per, 1)
        top = torch.lerp(lg.index_select(0, ra + xa).unsqueeze(1), lg.index_select(0, ra + xb).unsqueeze(1), wx)
        bot = torch.lerp(lg.index_select(0, rb + xa).unsqueeze(1), lg.index_select(0, rb + xb).unsqueeze(1), wx)
        wy = ly[rows][:, :, None, None]  # (m, rows_per, 1, 1)
        block = torch.lerp(top.unsqueeze(1), bot.unsqueeze(1), wy)  # (m, rows_per, cols_per, c)
        index = ((bi[:, None] * H + rows)[:, :, None] * W + cols[:, None, :])
        flat[index.view(-1)] = argmax_rows(block.view(-1, c), out_dtype, compiled=compiled)
    return labels


# class values interpolated per batch of mixed cells (32 MB of float32): bounds the temporary memory
_BLOCK_ELEMENTS = 1 << 23


def _groups(src: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Output positions grouped by their (non-decreasing) source index ``src``, at most ``size`` per group:
    the source index of each group ``(G,)`` and its positions ``(G, size)`` (padded with the group's last)."""
    n = src.numel()
    pos = torch.arange(n, device=src.device)
    run_start = torch.ones(n, dtype=torch.bool, device=src.device)
    run_start[1:] = src[1:] != src[:-1]
    starts = pos[run_start]
    offset = pos - starts[torch.cumsum(run_start, 0) - 1]  # position within its run
    first = pos[offset % size == 0]
    last = torch.cat([first[1:] - 1, first.new_tensor([n - 1])])
    positions = torch.minimum(first[:, None] + torch.arange(size, device=src.device), last[:, None])
    return src[first], positions


def upsample_softmax(logits: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Class probabilities at ``size``: softmax over classes of the upsampled logits (the order that
    agrees with :func:`upsample_argmax`)."""
    return upsample_logits(logits.float(), size, align_corners).softmax(1)
