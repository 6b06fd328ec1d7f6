"""BiFPN decoder (EfficientDet's bidirectional feature pyramid) over P{min_level}..P{max_level}.

The node graph is data, generated from the level range by :func:`bifpn_nodes`, and executed by one
generic :class:`FusionNode`; the fusion mode is one switch. All resampling follows runtime shapes, so any
input size works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eseg_cli.errors import EsegError
from eseg_cli.models.layers import ConvBN, SeparableConv, make_act, resize_by_level, resize_to, traced_for_inference

FUSION_MODES = ("fastattn", "softmax", "sum")


@dataclass(frozen=True)
class Node:
    """A fusion node: the level it produces and the indices of its inputs in the running feature list
    (which starts with the input levels min..max, then grows by one entry per node)."""

    level: int
    inputs: tuple[int, ...]


def bifpn_nodes(min_level: int, max_level: int) -> list[Node]:
    """The BiFPN graph for one repeat: a top-down pass then a bottom-up pass.

    Returns the nodes in execution order; the outputs of one repeat are the last ``num_levels`` nodes
    plus the first top-down node's predecessor chain, see :meth:`BiFPNLayer.forward`.
    """
    n = max_level - min_level + 1
    nodes: list[Node] = []
    last = n - 1  # index of the feature most recently produced at the level above
    td_index: dict[int, int] = {}
    for level in range(max_level - 1, min_level - 1, -1):  # top-down
        nodes.append(Node(level, (level - min_level, last)))
        last = n + len(nodes) - 1
        td_index[level] = last
    for level in range(min_level + 1, max_level + 1):  # bottom-up
        inputs = [level - min_level]
        if level in td_index:
            inputs.append(td_index[level])
        inputs.append(last)
        nodes.append(Node(level, tuple(inputs)))
        last = n + len(nodes) - 1
    return nodes


class WeightedFusion(nn.Module):
    """Fuse same-shaped tensors: ``fastattn`` (EfficientDet's fast normalized fusion,
    relu(w) / (sum relu(w) + eps)), ``softmax`` over the weights, or a plain ``sum``."""

    def __init__(self, num_inputs: int, mode: str = "fastattn", eps: float = 1e-4):
        super().__init__()
        if mode not in FUSION_MODES:
            raise EsegError(f"unknown fusion mode {mode!r}; choose one of {', '.join(FUSION_MODES)}")
        self.mode = mode
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_inputs)) if mode != "sum" else None
        self.frozen: tuple[float, ...] | None = None  # set by freeze_weights() for inference

    def freeze_weights(self) -> bool:
        """Fix the normalised weights as constants (inference only); see :mod:`eseg_cli.inference.fold`."""
        w = self.normalized_weights()
        if w is None:
            return False
        self.frozen = tuple(float(v) for v in w.detach().float().cpu())
        self.weight = None
        return True

    def normalized_weights(self) -> torch.Tensor | None:
        if self.weight is None:
            return None
        if self.mode == "softmax":
            return torch.softmax(self.weight, dim=0)
        w = F.relu(self.weight)
        return w / (w.sum() + self.eps)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if self.frozen is not None:  # inference: one fused multiply-add pass per extra input
            out = xs[0] * self.frozen[0]
            for x, wi in zip(xs[1:], self.frozen[1:]):
                out = torch.add(out, x, alpha=wi)
            return out
        w = self.normalized_weights()
        if w is None:
            return torch.stack(xs, dim=-1).sum(dim=-1) if len(xs) > 2 else xs[0] + xs[1]
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out


class FusionNode(nn.Module):
    """weighted fusion -> activation -> 3x3 separable conv -> BN (the paper's node)."""

    def __init__(self, node: Node, channels: int, fusion: str, act: str, norm: str = "batch",
                 input_levels: tuple[int, ...] | None = None):
        super().__init__()
        self.level = node.level
        self.inputs = node.inputs
        self.input_levels = tuple(input_levels) if input_levels is not None else None
        self.fuse = WeightedFusion(len(node.inputs), fusion)
        self.act = make_act(act)
        self.conv = SeparableConv(channels, channels, 3, norm=norm)

    def forward(self, feats: list[torch.Tensor], target_size: tuple[int, int]) -> torch.Tensor:
        if self.input_levels is not None and traced_for_inference(self):
            # one graph for every size (export, dynamic compile): the levels say which way to resample
            xs = [resize_by_level(feats[i], target_size, lv - self.level)
                  for i, lv in zip(self.inputs, self.input_levels)]
        else:
            xs = [resize_to(feats[i], target_size) for i in self.inputs]
        return self.conv(self.act(self.fuse(xs)))


class BiFPNLayer(nn.Module):
    """One BiFPN repeat over ``num_levels`` features of ``channels`` channels."""

    def __init__(self, min_level: int, max_level: int, channels: int, fusion: str, act: str, norm: str = "batch"):
        super().__init__()
        self.min_level, self.max_level = min_level, max_level
        nodes = bifpn_nodes(min_level, max_level)
        levels = list(range(min_level, max_level + 1)) + [n.level for n in nodes]  # of the running feature list
        self.nodes = nn.ModuleList(FusionNode(n, channels, fusion, act, norm, tuple(levels[i] for i in n.inputs))
                                   for n in nodes)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(feats)
        sizes = [tuple(f.shape[-2:]) for f in feats]
        feats = list(feats)
        out: dict[int, torch.Tensor] = {}
        for node in self.nodes:
            y = node(feats, sizes[node.level - self.min_level])
            feats.append(y)
            out[node.level] = y  # the bottom-up node (when there is one) overrides the top-down one
        assert len(out) == n
        return [out[level] for level in range(self.min_level, self.max_level + 1)]


def avg_pool2x(x: torch.Tensor) -> torch.Tensor:
    """2x average pooling to ceil(H/2) x ceil(W/2), averaging only real pixels at odd edges.

    ``avg_pool2d(ceil_mode=True)`` divides a partial edge window by its real pixels, so it equals replicate
    padding to even sizes followed by a plain 2x pool (checked in tests/test_models.py). The padded form is kept
    for torch-xla only, where ``ceil_mode`` turns a 1x1 map into 0x0: everywhere else it costs a copy per level
    and its backward (``replication_pad2d_backward``) broke inductor's compiled training step in channels-last.
    """
    if x.device.type == "xla":
        h, w = x.shape[-2:]
        return F.avg_pool2d(F.pad(x, (0, w % 2, 0, h % 2), mode="replicate"), kernel_size=2, stride=2)
    return F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


class BiFPNDecoder(nn.Module):
    """Laterals + extra levels + ``repeats`` BiFPN layers.

    - one 1x1 conv + BN lateral per backbone level used (shared by the top-down and bottom-up nodes
      that use it; EfficientDet-style separate laterals overshoot the paper's FLOPs);
    - the first extra level is a 2x average pool of its own 1x1 conv + BN on the backbone's top
      feature, each further one a 2x average pool of the level below.
    """

    def __init__(self, in_channels: list[int], in_reductions: list[int], channels: int, repeats: int,
                 min_level: int = 2, max_level: int = 9, fusion: str = "fastattn", act: str = "silu",
                 norm: str = "batch"):
        super().__init__()
        in_levels = [int(round(math.log2(r))) for r in in_reductions]
        if min_level < in_levels[0] or min_level > in_levels[-1]:
            raise EsegError(f"min_level must be between P{in_levels[0]} and P{in_levels[-1]} "
                            f"(the encoder's levels), got P{min_level}")
        if max_level <= min_level:
            raise EsegError(f"max_level (P{max_level}) must be above min_level (P{min_level})")
        if fusion not in FUSION_MODES:
            raise EsegError(f"unknown fusion mode {fusion!r}; choose one of {', '.join(FUSION_MODES)}")
        self.min_level, self.max_level = min_level, max_level
        self.used = [i for i, lv in enumerate(in_levels) if min_level <= lv <= max_level]
        self.laterals = nn.ModuleList(
            ConvBN(in_channels[i], channels, norm=norm) if in_channels[i] != channels else nn.Identity()
            for i in self.used
        )
        top = in_levels[self.used[-1]]
        self.num_extra = max(0, max_level - top)
        self.extra_proj = ConvBN(in_channels[self.used[-1]], channels, norm=norm) if self.num_extra else None
        self.layers = nn.ModuleList(BiFPNLayer(min_level, max_level, channels, fusion, act, norm)
                                    for _ in range(repeats))
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = [lat(features[i]) for lat, i in zip(self.laterals, self.used)]
        if self.num_extra:
            x = self.extra_proj(features[self.used[-1]])
            for _ in range(self.num_extra):
                x = avg_pool2x(x)
                feats.append(x)
        for layer in self.layers:
            feats = layer(feats)
        return feats
