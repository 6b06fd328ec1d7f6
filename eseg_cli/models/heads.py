"""Segmentation heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eseg_cli.errors import EsegError
from eseg_cli.models.layers import SeparableConv, traced_for_inference

HEAD_FUSION_MODES = ("softmax", "sum")


class FusionHead(nn.Module):
    """ESeg's head: every decoder level bilinearly upsampled to the finest one and combined as
    ``sum_i softmax(w)_i * up(P_i)`` (or a plain sum), then a 3x3 separable conv + BN + activation and
    a 3x3 separable classifier with bias (the configuration that lands on the paper's counts).

    In eval mode the softmax weights are constants; :meth:`freeze_weights` turns them into plain numbers.

    ``coarse_to_fine`` (inference only, off by default; int8 sets it, :func:`~eseg_cli.inference.int8.quantize_int8`):
    the same weighted sum computed from the top down, ``s = w_L P_L``, then ``s = up(s) + w_i P_i`` at each level
    below, so that every map is resampled once by a factor of about 2 instead of every level straight to P2's
    size (7 resamplings at P2's size for P2..P9). Bilinear upsampling twice by 2 is not upsampling by 4 (the two
    differ between a coarse sample and the next), so this is *not* exact: it is part of int8's approximation and
    measured with it (``reports/benchmarks/README.md``). Training ignores it.
    """

    def __init__(self, channels: int, num_levels: int, num_classes: int, act: str = "silu",
                 fusion: str = "softmax", norm: str = "batch"):
        super().__init__()
        if fusion not in HEAD_FUSION_MODES:
            raise EsegError(f"unknown head fusion {fusion!r}; choose one of {', '.join(HEAD_FUSION_MODES)}")
        self.fusion = fusion
        self.level_weight = nn.Parameter(torch.zeros(num_levels)) if fusion == "softmax" else None
        self.conv = SeparableConv(channels, channels, 3, norm=norm, act=act)
        self.classifier = SeparableConv(channels, num_classes, 3, norm=False)
        self.frozen: tuple[float, ...] | None = None  # set by freeze_weights() for inference
        self.coarse_to_fine = False

    def freeze_weights(self) -> bool:
        """Fix the softmax level weights as constants (inference only); see :mod:`eseg_cli.inference.fold`."""
        w = self.level_weights()
        if w is None:
            return False
        self.frozen = tuple(float(v) for v in w.detach().float().cpu())
        self.level_weight = None
        return True

    def level_weights(self) -> torch.Tensor | None:
        return None if self.level_weight is None else torch.softmax(self.level_weight, dim=0)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        traced = traced_for_inference(self)
        if self.coarse_to_fine and not self.training:
            return self.classifier(self.conv(self._coarse_to_fine(feats, traced)))
        if self.frozen is not None:  # inference: one fused multiply-add pass per level
            out = feats[0] * self.frozen[0]
            for f, wi in zip(feats[1:], self.frozen[1:]):
                out = torch.add(out, upsample_or_broadcast(f, size, traced), alpha=wi)
            return self.classifier(self.conv(out))
        w = self.level_weights()
        out = feats[0] if w is None else feats[0] * w[0]
        for i in range(1, len(feats)):
            up = upsample_or_broadcast(feats[i], size, traced)
            out = out + (up if w is None else up * w[i])
        return self.classifier(self.conv(out))

    def _coarse_to_fine(self, feats: list[torch.Tensor], traced: bool) -> torch.Tensor:
        """``sum_i w_i up(P_i)`` from the top level down (see the class), as ``w_0 t_0`` with ``t_L = P_L`` and
        ``t_i = P_i + (w_(i+1) / w_i) up(t_(i+1))``: no level's convolution output is multiplied by a number.
        Written ``s_i = up(s_(i+1)) + w_i P_i``, inductor's freezing folded those numbers into the convolutions'
        weights although their outputs feed the next pyramid node too (torch 2.14: the compiled quick-start model
        agreed with its eager self on 88% of pixels)."""
        w = self.frozen if self.frozen is not None else self.level_weights()
        out = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            up = upsample_or_broadcast(out, feats[i].shape[-2:], traced)
            if w is None:
                out = feats[i] + up
            elif self.frozen is not None:  # plain numbers: one fused multiply-add
                out = torch.add(feats[i], up, alpha=w[i + 1] / w[i])
            else:
                out = feats[i] + up * (w[i + 1] / w[i])
        return out if w is None else out * w[0]


def upsample_or_broadcast(f: torch.Tensor, size, traced: bool = False) -> torch.Tensor:
    """``f`` bilinearly upsampled to ``size``, for adding to a map of that size; a 1x1 map is returned as it is.

    Bilinear upsampling of a 1x1 map gives its one value everywhere, which broadcasting in the addition gives
    too, exactly and without the full-size copy: a (N, C, 1, 1) tensor is both NCHW- and NHWC-contiguous,
    so the CPU kernel wrote its output NCHW and every channels_last consumer then converted it (the top levels
    are 1x1 at the synthetic recipe's 256x256 crops; 13% of an ESeg-Lite-S training step).
    """
    if not traced and f.shape[-2:] == (1, 1):  # traced (layers.traced_for_inference): one graph, 1x1 or not
        return f
    return F.interpolate(f, size=size, mode="bilinear", align_corners=False)
