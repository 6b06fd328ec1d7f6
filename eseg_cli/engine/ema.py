"""Exponential moving average of a model's weights (buffers are copied), on the model's own device.

A small class of our own rather than timm's ModelEmaV3, which makes a torch.Generator on the model's device
and so cannot hold an XLA model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEma:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step; ``module`` is the averaged model."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
