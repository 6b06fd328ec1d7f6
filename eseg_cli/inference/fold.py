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
# batch norm feeds it, and feeds nothing else: ``nn.Sequential`` (this project's conv blocks), timm's
# EfficientNet / ResNet blocks (their ``forward`` calls conv, bn1, ... in the order they are registered) and
# timm's ``features_only`` wrappers (which run their children in order: a ResNet's stem conv1, bn1).
# Pairing by registration order is checked against the order the convs and batch norms are really called, for
# every registered model, by tests/models/test_contract.py (torch.fx cannot trace these models: their
# forwards take lists and branch on sizes). A module of another kind keeps its batch norms: slower, never wrong.
_ORDERED_PARENTS = ("ConvBnAct", "EdgeResidual", "InvertedResidual", "DepthwiseSeparableConv", "ConvNormAct",
                    "EfficientNetFeatures", "Bottleneck", "BasicBlock", "FeatureListNet", "FeatureDictNet")


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` module names of every conv -> batch-norm pair that :func:`fold_batchnorm` folds: a batch
    norm and the sibling registered right before it, in a parent whose registration order is its call order,
    when that sibling is a conv or an ``nn.Sequential`` ending in one (a deep stem: ``conv1 = Sequential(...)``)."""
    pairs = []
    for prefix, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential) and type(parent).__name__ not in _ORDERED_PARENTS:
            continue
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            bn = parent._modules[b]
            conv = _last_conv(parent._modules[a], f"{prefix}.{a}".lstrip("."))
            if conv is not None and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                pairs.append((conv, f"{prefix}.{b}".lstrip(".")))
    return pairs


def _last_conv(module: nn.Module | None, name: str) -> str | None:
    """The name of ``module`` if it is a conv, or of the conv that ends it as a (nested) ``nn.Sequential``."""
    while isinstance(module, nn.Sequential) and len(module):
        name, module = f"{name}.{len(module) - 1}", module[-1]
    return name if isinstance(module, nn.Conv2d) else None


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every conv -> BN pair of ``model`` (:func:`conv_bn_pairs`; in place, eval mode) into one conv; return
    how many.

    timm's ``BatchNormAct2d`` keeps its activation (and drop) after the folded conv.
    """
    model.eval()
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        _replace(model, conv_name, fuse_conv_bn_eval(model.get_submodule(conv_name), bn))
        rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None))
                if m is not None and not isinstance(m, nn.Identity)]
        _replace(model, bn_name, (rest[0] if len(rest) == 1 else nn.Sequential(*rest)) if rest else nn.Identity())
    return len(pairs)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    model.get_submodule(parent)._modules[child] = new


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
