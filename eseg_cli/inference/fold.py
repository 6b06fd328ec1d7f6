"""Exact inference-time simplifications of a trained model.

- :func:`fold_batchnorm`: every conv -> batch-norm pair becomes one conv (``torch.nn.utils.fusion``'s
  maths). Batch norm is the largest part of the memory-bound glue around ESeg's convolutions.
- :func:`freeze_fusion_weights`: the BiFPN's fast-normalised fusion weights and the head's softmax level
  weights are constants once training is over; they become plain numbers (no per-call softmax, no tensor
  indexing), so the weighted sums turn into single fused ``add(a, b, alpha=w)`` passes.

Both keep the function: outputs agree with the training model up to float rounding (tests check 1e-4
relative for every scale). The result is for inference only and must not be trained.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Parents whose registration order is their data-flow order, so that a conv registered right before a
# batch norm feeds it: ``nn.Sequential`` (this project's conv blocks) and timm's EfficientNet / ResNet blocks.
_ORDERED_PARENTS = ("EdgeResidual", "InvertedResidual", "DepthwiseSeparableConv", "EfficientNetFeatures",
                    "ConvNormAct", "Bottleneck", "BasicBlock")


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every conv -> BN pair of ``model`` (in place, eval mode) into one conv; return how many.

    timm's ``BatchNormAct2d`` keeps its activation (and drop) after the folded conv.
    """
    model.eval()
    count = 0
    for parent in list(model.modules()):
        if not isinstance(parent, nn.Sequential) and type(parent).__name__ not in _ORDERED_PARENTS:
            continue
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None))
                        if m is not None and not isinstance(m, nn.Identity)]
                parent._modules[b] = (rest[0] if len(rest) == 1 else nn.Sequential(*rest)) if rest else nn.Identity()
                count += 1
    return count


def freeze_fusion_weights(model: nn.Module) -> int:
    """Turn every learned fusion weight vector (BiFPN nodes, the head's level weights) into constants.

    Calls ``freeze()`` on each module that has one; returns how many were frozen.
    """
    count = 0
    for m in model.modules():
        freeze = getattr(m, "freeze_weights", None)
        if callable(freeze) and freeze():
            count += 1
    return count
