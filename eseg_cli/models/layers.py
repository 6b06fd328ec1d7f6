"""Building blocks shared by the decoders and heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import get_act_layer
from torch import nn

from eseg_cli.errors import EsegError

# the decoders' normalisation: BatchNorm (the paper's) or GroupNorm (Wu & He 2018, insensitive to the batch size and
# to 1x1 maps; an option for proxies whose top levels are tiny, applied to every decoder alike)
NORMS = ("batch", "group")
GROUPS = 32  # Wu & He's default number of groups (fewer where the channels do not divide by it)


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise EsegError(f"unknown decoder_norm {norm!r}; choose one of {', '.join(NORMS)}", field="decoder_norm")
    return norm


def make_norm(norm: str, channels: int) -> nn.Module:
    """``batch``: BatchNorm2d; ``group``: GroupNorm with 32 groups (the largest divisor of 32 that divides
    ``channels``)."""
    if check_norm(norm) == "group":
        return nn.GroupNorm(math.gcd(GROUPS, channels), channels)
    return nn.BatchNorm2d(channels)


def make_act(name: str) -> nn.Module:
    """An activation module from its timm name (``silu``/``swish``, ``relu``, ``gelu`` ...)."""
    return get_act_layer(name)(inplace=True) if name in ("relu", "silu", "swish") else get_act_layer(name)()


class ConvBN(nn.Sequential):
    """1x1 (or kxk) conv without bias, then batch norm (or ``norm="group"``), then an optional activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, act: str | None = None, norm: str = "batch"):
        layers = [nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
                  make_norm(norm, out_ch)]
        if act:
            layers.append(make_act(act))
        super().__init__(*layers)


class SeparableConv(nn.Sequential):
    """Depthwise kxk conv then pointwise 1x1 conv, optionally followed by batch norm and an activation.

    Without batch norm the pointwise conv carries a bias (classifier use). ``norm``: True or ``"batch"`` (batch
    norm), ``"group"`` (group norm), False (none).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, *, dilation: int = 1,
                 norm: bool | str = True, act: str | None = None):
        pad = dilation * (kernel_size // 2)
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, in_ch, kernel_size, padding=pad, dilation=dilation, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=not norm),
        ]
        if norm:
            layers.append(make_norm("batch" if norm is True else norm, out_ch))
        if act:
            layers.append(make_act(act))
        super().__init__(*layers)


def resize_to(x: torch.Tensor, size: tuple[int, int], *, up_mode: str = "nearest") -> torch.Tensor:
    """Resample ``x`` to the spatial ``size`` of the level it is fused into.

    Upsampling interpolates to the exact target size; downsampling uses 3x3/2 max pooling (the
    EfficientDet choice), whose ceil(H/2) output matches how strided convs shrink odd sizes, with an
    adaptive pool as the fallback for anything else. Sizes always follow the runtime shape.
    """
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        if (h + 1) // 2 == size[0] and (w + 1) // 2 == size[1]:
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        return F.adaptive_max_pool2d(x, size)
    if up_mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=up_mode, align_corners=False)


def traced_for_inference(module: nn.Module) -> bool:
    """Whether ``module`` runs inside a graph that ``torch.compile`` or ``torch.export`` records for inference.

    Such a graph may serve inputs of every size (``export``, ``compile(dynamic=True)``), so it must not branch on
    a comparison of sizes: each branch would become a guard, an assert that fails (export) or a recompilation
    (compile) for the sizes that take the other branch. Where this is True, resampling takes the path that holds
    at every size (:func:`resize_by_level`, bilinear upsampling of 1x1 maps), which computes the same numbers.
    Eager code and training keep their size checks (the 1x1 shortcuts save layout copies there).
    """
    return not module.training and torch.compiler.is_compiling()


def resize_by_level(x: torch.Tensor, size: tuple[int, int], step: int) -> torch.Tensor:
    """:func:`resize_to` for a source ``step`` pyramid levels above (coarser, ``step > 0``) or one below
    (``step == -1``) the target, the direction taken from the levels instead of a comparison of sizes.

    For graphs that serve every size (:func:`traced_for_inference`): comparing two levels' sizes adds a guard
    ("P9 is not the size of P8") that holds for some input sizes only. It computes what :func:`resize_to`
    computes wherever each level is ceil(half) the one below (strided convs and
    :func:`~eseg_cli.models.bifpn.avg_pool2x` make it so): where two levels are both 1x1, nearest upsampling and
    the 3x3/2 max pool are identities there too.
    """
    if step == 0:
        return x
    if step > 0:
        return F.interpolate(x, size=size, mode="nearest")
    if step == -1:
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    raise EsegError(f"a fusion input {-step} levels below its node cannot be resampled by level; only one")


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``, with a faster gradient on CPU.

    The forward is that call itself, bit for bit. For a float32 NCHW tensor on CPU that needs a gradient and is
    upsampled by whole factors, the gradient is computed by :class:`_BilinearUpsampleGrad` instead of torch's
    ``upsample_bilinear2d_backward``, whose CPU kernel scatters one output pixel at a time (2.3-3x slower on the
    4x19 logits of a 256x256 or 512x512 training step); it equals torch's within float32 rounding
    (tests/test_models.py). Channels_last maps keep torch's kernel, which vectorizes over the channels and measured
    faster than these matmuls.
    """
    # the cheap checks first, and ``size`` passed on as given: exports trace this with symbolic sizes
    if (x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and x.is_contiguous()):
        h, w = x.shape[-2:]
        if size[0] % h == 0 and size[1] % w == 0:
            return _BilinearUpsampleGrad.apply(x, (int(size[0]), int(size[1])))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _band(n: int, factor: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """The gradient of 1-D bilinear upsampling by ``factor`` for one chunk of ``b`` inputs (``b`` divides ``n``):
    a (b * factor, b + 2) matrix whose columns are the chunk's inputs and the one on each side of it.

    Every output of torch's rule (source position ``(j + 0.5) / factor - 0.5``, weights ``1 - |distance|`` to the
    two nearest inputs) lies within one input of its own block, so a chunk's gradient needs only that halo.
    Built with tensor ops (no cache), so it traces under torch.compile.
    """
    b = max(d for d in range(1, 17) if n % d == 0)  # chunks of up to 16 inputs: small dense matmuls
    pos = (torch.arange(b * factor, dtype=dtype) + 0.5) / factor - 0.5
    cols = torch.arange(-1, b + 1, dtype=dtype)
    return (1 - (cols[None, :] - pos[:, None]).abs()).clamp_min(0), b


def _fold_halos(y: torch.Tensor, b: int) -> torch.Tensor:
    """(B, chunks, b + 2, ...) per-chunk sums with halos -> (B, chunks, b, ...): each halo is added to the
    neighbouring chunk's edge input, and beyond the ends to the edge itself (torch clamps the source index)."""
    out = y[:, :, 1:b + 1].clone()
    out[:, 1:, 0] += y[:, :-1, b + 1]
    out[:, :-1, b - 1] += y[:, 1:, 0]
    out[:, 0, 0] += y[:, 0, 0]
    out[:, -1, b - 1] += y[:, -1, b + 1]
    return out


class _BilinearUpsampleGrad(torch.autograd.Function):
    """Bilinear upsampling by whole factors whose backward is two banded matmuls (rows, then columns)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        ctx.in_shape = tuple(x.shape)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        n, c, h, w = ctx.in_shape
        H, W = grad.shape[-2:]
        grad = grad.contiguous()
        kh, bh = _band(h, H // h, grad.dtype)
        kw, bw = _band(w, W // w, grad.dtype)
        rows = torch.matmul(kh.t(), grad.view(n * c, h // bh, bh * (H // h), W))  # (nc, chunks, bh + 2, W)
        rows = _fold_halos(rows, bh).view(n * c * h, w // bw, bw * (W // w))
        cols = torch.matmul(rows, kw)  # (nch, chunks, bw + 2)
        return _fold_halos(cols, bw).view(n, c, h, w), None
