"""Segmentation metrics from a confusion matrix accumulated on the device.

Definitions follow the Cityscapes / ADE20K evaluation scripts: pixels whose ground truth is the ignore
index are excluded; IoU_c = TP / (TP + FP + FN); classes absent from both prediction and ground truth
(TP + FP + FN = 0) are left out of the mean (reported as NaN -> ``None`` in per-class output).

The ignore index applies to the ground truth only. A prediction outside ``0..num_classes-1`` (255, a
labelId, any stray value) is a wrong pixel: a false negative of its true class, counted in an extra
"invalid prediction" column that is no class's prediction (so it adds no false positive anywhere).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """``mat[t, p]`` counts pixels of true class ``t`` predicted as ``p``; kept on the device until computed.

    ``invalid[t]`` counts pixels of true class ``t`` whose prediction is no class at all (out of range).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None,
                 class_names: list[str] | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        # one extra column for out-of-range predictions; ``mat`` and ``invalid`` are views into it
        self.counts = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64, device=device)

    @property
    def mat(self) -> torch.Tensor:
        """The ``num_classes x num_classes`` confusion matrix (rows: truth, columns: prediction)."""
        return self.counts[:, : self.num_classes]

    @property
    def invalid(self) -> torch.Tensor:
        """Per true class, the pixels predicted as an id outside ``0..num_classes-1`` (always wrong)."""
        return self.counts[:, self.num_classes]

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are integer label maps of the same shape (no host sync)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        n = self.num_classes
        cols = n + 1
        pred = pred.to(self.counts.device).reshape(-1).long()
        target = target.to(self.counts.device).reshape(-1).long()
        # out-of-range targets (the ignore index) get weight 0; out-of-range predictions go to the
        # "invalid" column: wrong for their true class, a false positive of no class
        valid = (target >= 0) & (target < n) & (target != self.ignore_index)
        pred = torch.where((pred >= 0) & (pred < n), pred, torch.full_like(pred, n))
        # ignored pixels go to an extra bin that is dropped: static shapes, no boolean indexing (XLA-friendly)
        idx = torch.where(valid, target * cols + pred, torch.full_like(target, n * cols))
        self.counts += torch.bincount(idx, minlength=n * cols + 1)[: n * cols].reshape(n, cols)

    def all_reduce(self) -> None:
        """Sum the matrix over processes (no-op without an initialised process group)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.counts)

    def compute(self) -> dict:
        """Metrics in percent: mIoU, pixAcc, mAcc, fwIoU and per_class {name: {IoU, Acc}} (None when undefined)."""
        counts = self.counts.detach().to("cpu", torch.float64)
        m = counts[:, : self.num_classes]
        tp = m.diag()
        gt = counts.sum(1)  # pixels of each true class, those with an invalid prediction included
        pr = m.sum(0)  # pixels predicted as each class
        union = gt + pr - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
        total = gt.sum()
        present = ~torch.isnan(iou)
        freq = gt / total.clamp(min=1)
        out = {
            "mIoU": _pct(iou[present].mean()) if present.any() else 0.0,
            "pixAcc": _pct(tp.sum() / total) if total > 0 else 0.0,
            "mAcc": _pct(acc[~torch.isnan(acc)].mean()) if (~torch.isnan(acc)).any() else 0.0,
            "fwIoU": _pct((freq[present] * iou[present]).sum()) if present.any() else 0.0,
            "per_class": {
                name: {"IoU": _pct_or_none(iou[i]), "Acc": _pct_or_none(acc[i])}
                for i, name in enumerate(self.class_names)
            },
            "pixels": int(total.item()),
            "invalid_predictions": int(counts[:, self.num_classes].sum().item()),
        }
        return out

    def to_csv(self) -> str:
        """The matrix as CSV: header row of predicted classes, one row per true class; a last column
        ``(invalid)`` appears when some predictions were outside the class range."""
        names = [n.replace(",", " ") for n in self.class_names]
        counts = self.counts.cpu()
        with_invalid = bool(counts[:, self.num_classes].any())
        if not with_invalid:
            counts = counts[:, : self.num_classes]
        lines = ["true\\pred," + ",".join(names + (["(invalid)"] if with_invalid else []))]
        for name, row in zip(names, counts.tolist()):
            lines.append(name + "," + ",".join(str(v) for v in row))
        return "\n".join(lines) + "\n"


def _pct(x: torch.Tensor) -> float:
    return round(float(x) * 100.0, 4)


def _pct_or_none(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else round(v * 100.0, 4)
