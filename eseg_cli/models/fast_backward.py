"""Encoder layers whose backward pass is faster on CPU, with the forward pass unchanged.

Two costs of an EfficientNet training step on CPU that the network's definition does not need (measured on an AMD
EPYC with AVX512-BF16, torch 2.14.1's oneDNN; reports/benchmarks/README.md, "The encoder's backward"):

- the gradient of squeeze-and-excitation's spatial mean, which torch writes out as a full NCHW tensor and autograd
  then adds to the block's channels_last gradient (:func:`spatial_mean`);
- oneDNN's bfloat16 depthwise-convolution backward, slower than its float32 one for 5x5 kernels (the weights'
  gradient, 2.7-3.9x) and for stride 2 (the input's gradient, 9-34x) (:class:`DepthwiseConv2d`;
  benchmarks/depthwise_backward.py).

Both keep the module's parameters and state-dict keys (pretrained weights load unchanged) and compute the same
forward outputs bit for bit; under ``torch.compile``, ``torch.export`` and in inference they are torch's own ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models._efficientnet_blocks import SqueezeExcite as TimmSqueezeExcite
from torch import nn


class SqueezeExcite(TimmSqueezeExcite):
    """timm's EfficientNet squeeze-and-excitation (the same parameters and outputs), with the spatial mean's
    gradient left as a broadcast view (:func:`spatial_mean`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = self.conv_expand(self.act1(self.conv_reduce(spatial_mean(x))))
        return x * self.gate(x_se)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean((2, 3), keepdim=True)``, whose gradient is ``grad / (H * W)`` broadcast as a view.

    torch's gradient of a mean writes the broadcast out as a full NCHW tensor, which autograd then adds to the
    block's other (channels_last) gradient of ``x``: a full-size write and a mixed-layout addition for every
    squeeze-and-excitation. The values are the same, bit for bit (the same division of each element).
    """
    if not torch.compiler.is_compiling() and x.requires_grad and torch.is_grad_enabled():
        return _SpatialMean.apply(x)
    return x.mean((2, 3), keepdim=True)


class _SpatialMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.in_shape = x.shape
        return x.mean((2, 3), keepdim=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        h, w = ctx.in_shape[-2:]
        return (grad / (h * w)).expand(ctx.in_shape)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` whose backward runs in float32 when its forward runs in CPU bfloat16 autocast.

    The forward is autocast's own (input and weight rounded to bfloat16, a bfloat16 convolution); the backward
    computes the gradients of that convolution in float32 from the same bfloat16 values, which is what bfloat16
    autocast computes up to rounding (more exactly, not less). Everywhere else (float32, GPUs, inference, compiled
    graphs) it is ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not torch.compiler.is_compiling() and self.training and torch.is_grad_enabled()
                and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            return _DepthwiseFloatGrad.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                             self.groups)
        return super().forward(x)


class _DepthwiseFloatGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        x16, w16 = x.to(torch.bfloat16), weight.to(torch.bfloat16)  # what autocast gives conv2d
        b16 = None if bias is None else bias.to(torch.bfloat16)
        ctx.save_for_backward(x16, w16)
        ctx.conf = (x.dtype, weight.dtype, bias is not None, stride, padding, dilation, groups)
        return F.conv2d(x16, w16, b16, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x16, w16 = ctx.saved_tensors
        x_dtype, w_dtype, has_bias, stride, padding, dilation, groups = ctx.conf
        need = ctx.needs_input_grad
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad.float(), x16.float(), w16.float(), [w16.shape[0]] if has_bias else None, stride, padding,
            dilation, False, [0, 0], groups, [need[0], need[1], has_bias and need[2]])
        return (None if gx is None else gx.to(x_dtype), None if gw is None else gw.to(w_dtype),
                None if gb is None else gb.to(w_dtype), None, None, None, None)


def slow_bf16_depthwise(m: nn.Module) -> bool:
    """A plain depthwise ``nn.Conv2d`` whose bfloat16 backward oneDNN computes slowly: a kernel larger than 3x3
    (the weights' gradient) or a stride above 1 (the input's gradient). 3x3 stride-1 ones are faster in bfloat16."""
    return (type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels == m.out_channels
            and m.padding_mode == "zeros" and isinstance(m.padding, tuple)
            and (max(m.kernel_size) > 3 or max(m.stride) > 1))


def with_fast_backward(module: nn.Module) -> nn.Module:
    """``module`` with every :func:`slow_bf16_depthwise` convolution made a :class:`DepthwiseConv2d` holding the same
    parameters (the same state-dict keys and values)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if slow_bf16_depthwise(child):
                fast = DepthwiseConv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                       padding=child.padding, dilation=child.dilation, groups=child.groups,
                                       bias=child.bias is not None, device="meta")
                fast.weight, fast.bias = child.weight, child.bias
                setattr(parent, name, fast)
    return module
