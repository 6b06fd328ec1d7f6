"""The encoder -> decoder -> head assembly shared by every model in the registry."""

from __future__ import annotations

import math

import torch
from torch import nn

from eseg_cli.errors import EsegError
from eseg_cli.models.layers import upsample_bilinear


class Segmentor(nn.Module):
    """``logits = upsample(head(decoder(encoder(x))))`` at the input's size.

    ``config`` records how the model was built (registry name and keyword arguments) so that a
    checkpoint can rebuild it.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module, *, num_classes: int,
                 max_level: int, in_chans: int = 3, config: dict | None = None):
        super().__init__()
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.num_classes = num_classes
        self.max_level = max_level
        self.in_chans = in_chans
        self.config = dict(config or {})

    def check_input(self, x: torch.Tensor) -> None:
        """Clear errors for inputs that cannot work (instead of a shape error deep inside)."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise EsegError(f"expected an input of shape (batch, {self.in_chans}, height, width), got {tuple(x.shape)}")
        if self.training and x.shape[0] == 1:
            top = [math.ceil(s / 2 ** self.max_level) for s in x.shape[-2:]]
            if top == [1, 1]:
                raise EsegError(
                    f"a batch of 1 at {x.shape[-2]}x{x.shape[-1]} leaves 1x1 maps at P{self.max_level}, where "
                    "BatchNorm cannot train (it needs more than one value per channel); use a batch of at least 2, "
                    "a larger crop, or fewer levels (max_level)"
                )

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the head's resolution (stride 4 for ESeg), before the final upsampling."""
        return self.head(self.decoder(self.encoder(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        # In float32: under bf16/fp16 autocast the upsampling then neither runs the slower reduced-precision CPU
        # kernel nor leaves the loss a full-size cast to make (and its gradient one back); the result is the
        # same interpolation of the same stride-4 logits, only not rounded to 16 bits.
        logits = self.forward_logits(x).float()
        # channels_last training keeps the logits channels_last (upsample_bilinear then runs torch's kernel, which
        # vectorises over the classes), and the losses read them as one row of classes per pixel
        # (engine/losses.py): upsampling and loss, forward and backward, 13.3 against 18.0 ms for 4x19x256x256 NCHW
        # logits; 1.04x on ESeg-Lite-S's bf16 training step (reports/benchmarks/README.md, "The encoder's
        # backward"). Otherwise the stride-4 logits are made NCHW and come out NCHW, with the banded gradient.
        if not (self.training and torch.is_grad_enabled() and logits.is_contiguous(memory_format=torch.channels_last)):
            logits = logits.contiguous()
        return upsample_bilinear(logits, x.shape[-2:])
