"""Losses: OHEM cross-entropy (the paper's) and plain cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels only.

    A pixel is hard when the softmax probability of its true class is below ``thresh`` (0.7). At least
    ``min_kept`` pixels per batch are kept: if fewer are hard, the threshold rises to the ``min_kept``-th
    smallest true-class probability. Written with static shapes (a threshold and a mask, no boolean
    indexing) so it compiles on XLA without host syncs.
    """

    def __init__(self, thresh: float = 0.7, min_kept: int = 100000, ignore_index: int = 255):
        super().__init__()
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pixel_loss = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        with torch.no_grad():
            prob = torch.exp(-pixel_loss)  # true-class probability (1 on ignored pixels)
            prob = torch.where(valid, prob, torch.full_like(prob, 2.0))  # ignored pixels never count as hard
            flat = prob.reshape(-1)
            k = min(self.min_kept, flat.numel())
            thresh = torch.tensor(self.thresh, device=prob.device, dtype=prob.dtype)
            if k > 0:
                kth = torch.kthvalue(flat, k).values  # the k-th smallest true-class probability
                thresh = torch.maximum(thresh, torch.where(kth <= 1.0, kth, thresh))
            keep = valid & (prob <= thresh)
        keep_f = keep.to(pixel_loss.dtype)
        return (pixel_loss * keep_f).sum() / keep_f.sum().clamp(min=1.0)


def build_loss(name: str, *, ohem_thresh: float = 0.7, ohem_min_kept: int = 100000,
               ignore_index: int = 255) -> nn.Module:
    """``"ohem"`` -> :class:`OhemCrossEntropy`, ``"ce"`` -> ``nn.CrossEntropyLoss`` (both ignore ``ignore_index``)."""
    if name == "ohem":
        return OhemCrossEntropy(ohem_thresh, ohem_min_kept, ignore_index)
    if name == "ce":
        return _CrossEntropy(ignore_index)
    raise ValueError(f"unknown loss {name!r}")


class _CrossEntropy(nn.Module):
    def __init__(self, ignore_index: int):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)
