"""Inference-time simplification: fold batch norm into the convolution before it.

Half of ESeg-S's CPU time is memory-bound glue around its convolutions (PAPER.md); batch norm is the
largest single part of it and costs nothing once folded. Only parents whose registration order is their
data-flow order are touched: ``nn.Sequential`` (this project's conv blocks) and timm's EfficientNet /
ResNet blocks, where each ``conv*`` is directly followed by its ``bn*``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_ORDERED_PARENTS = ("EdgeResidual", "InvertedResidual", "DepthwiseSeparableConv",
                    "EfficientNetFeatures", "ConvNormAct", "Bottleneck", "BasicBlock")


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean) * scale + shift)
    return fused.to(conv.weight.device, conv.weight.dtype)


def fuse_conv_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every conv -> BN pair folded into one conv.

    timm's ``BatchNormAct2d`` keeps its activation (and drop) after the folded conv. The result gives the
    same outputs up to float rounding and must not be trained.
    """
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    count = 0
    for parent in list(model.modules()):
        if not isinstance(parent, nn.Sequential) and type(parent).__name__ not in _ORDERED_PARENTS:
            continue
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                parent._modules[a] = _fold(conv, bn)
                rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
                parent._modules[b] = nn.Sequential(*rest) if rest else nn.Identity()
                count += 1
    model.fused_bn = count
    return model
