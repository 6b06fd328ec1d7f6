"""The four score bugs of issue 10, each with a case that failed before the fix, and the metric checked
against an independent NumPy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from eseg_cli.engine.losses import OhemCrossEntropy, build_loss
from eseg_cli.engine.metrics import ConfusionMatrix

# ------------------------------------------------------------------ ConfusionMatrix: out-of-range predictions

def test_all_255_prediction_scores_zero_not_class_0():
    # a road-heavy image (class 0) predicted as 255 everywhere: every pixel is wrong
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :2] = 1
    pred = torch.full_like(target, 255)
    cm = ConfusionMatrix(19)
    cm.update(pred, target)
    m = cm.compute()
    assert m["pixAcc"] == 0.0 and m["mIoU"] == 0.0 and m["mAcc"] == 0.0
    assert m["invalid_predictions"] == 64 and m["pixels"] == 64
    assert int(cm.mat.sum()) == 0  # no class was predicted


def _numpy_metrics(pred: np.ndarray, target: np.ndarray, n: int, ignore: int) -> dict:
    """An independent reference: per-pixel loops of the Cityscapes definitions, no bincount."""
    pred, target = pred.ravel(), target.ravel()
    valid = (target != ignore) & (target >= 0) & (target < n)
    p, t = pred[valid], target[valid]
    tp = np.array([np.sum((t == c) & (p == c)) for c in range(n)], float)
    fn = np.array([np.sum((t == c) & (p != c)) for c in range(n)], float)  # out-of-range p included
    fp = np.array([np.sum((t != c) & (p == c)) for c in range(n)], float)
    union = tp + fp + fn
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    gt = tp + fn
    acc = np.where(gt > 0, tp / np.maximum(gt, 1), np.nan)
    freq = gt / gt.sum()
    return {"mIoU": 100 * np.nanmean(iou), "pixAcc": 100 * tp.sum() / valid.sum(),
            "mAcc": 100 * np.nanmean(acc), "fwIoU": 100 * np.nansum(freq * np.nan_to_num(iou)),
            "iou": iou, "pixels": int(valid.sum())}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_independent_numpy_on_random_predictions_with_out_of_range_ids(seed):
    rng = np.random.default_rng(seed)
    n = 7
    target = rng.integers(0, n, size=(3, 40, 50))
    target[rng.random(target.shape) < 0.15] = 255
    pred = rng.integers(0, n, size=target.shape)
    # bias towards correct, then sprinkle out-of-range ids: 255, n, large, negative
    pred = np.where(rng.random(target.shape) < 0.5, np.where(target == 255, 0, target), pred)
    bad = rng.random(target.shape)
    pred = np.where(bad < 0.05, 255, pred)
    pred = np.where((bad >= 0.05) & (bad < 0.08), n, pred)
    pred = np.where((bad >= 0.08) & (bad < 0.10), 40000, pred)
    pred = np.where((bad >= 0.10) & (bad < 0.11), -3, pred)
    cm = ConfusionMatrix(n)
    for b in range(3):  # accumulated over several updates
        cm.update(torch.from_numpy(pred[b]), torch.from_numpy(target[b]))
    got = cm.compute()
    ref = _numpy_metrics(pred, target, n, 255)
    for k in ("mIoU", "pixAcc", "mAcc", "fwIoU"):
        assert got[k] == pytest.approx(ref[k], abs=1e-3), k
    assert got["pixels"] == ref["pixels"]
    ious = [got["per_class"][str(c)]["IoU"] for c in range(n)]
    assert ious == pytest.approx(list(100 * ref["iou"]), abs=1e-3)


def test_metrics_match_torchmetrics_when_installed():
    tm = pytest.importorskip("torchmetrics.functional.classification", reason="torchmetrics is not installed")
    g = torch.Generator().manual_seed(0)
    n = 5
    target = torch.randint(0, n, (2, 30, 30), generator=g)
    target[:, :3] = 255
    pred = torch.randint(0, n, (2, 30, 30), generator=g)
    cm = ConfusionMatrix(n)
    cm.update(pred, target)
    ref = tm.multiclass_confusion_matrix(pred, target, n, ignore_index=255)
    assert torch.equal(cm.mat, ref)


def test_csv_gets_an_invalid_column_only_when_needed():
    cm = ConfusionMatrix(2, class_names=["road", "sky"])
    cm.update(torch.tensor([0, 255, 1]), torch.tensor([0, 0, 1]))
    lines = cm.to_csv().splitlines()
    assert lines == ["true\\pred,road,sky,(invalid)", "road,1,0,1", "sky,0,1,0"]


# ------------------------------------------------------------------ OHEM

def _logits_for_probs(p_true: list[float]) -> torch.Tensor:
    """(1, 2, 1, N) logits whose class-0 softmax probabilities are ``p_true``."""
    p = torch.tensor(p_true)
    logit0 = torch.log(p) - torch.log1p(-p)
    out = torch.zeros(1, 2, 1, len(p_true))
    out[0, 0, 0] = logit0
    return out


def test_ohem_keeps_every_valid_pixel_when_fewer_than_min_kept():
    logits = _logits_for_probs([0.99, 0.98, 0.5, 0.1, 0.95, 0.9])
    target = torch.zeros(1, 1, 6, dtype=torch.long)
    target[0, 0, 4:] = 255  # 4 valid pixels, min_kept 10
    per_pixel = nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none").flatten()
    loss = OhemCrossEntropy(0.7, min_kept=10)(logits, target)
    assert loss.item() == pytest.approx(per_pixel[:4].mean().item(), rel=1e-5)  # not only the 2 hard ones


def test_ohem_min_kept_is_per_image_so_splitting_the_batch_does_not_change_it():
    logits = _logits_for_probs([0.99, 0.98, 0.5, 0.01])
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    loss_fn = OhemCrossEntropy(0.7, min_kept=3)
    one = loss_fn(logits, target)
    # the same image twice in one batch (one process) keeps the same pixels as each image alone (two processes)
    two = loss_fn(logits.repeat(2, 1, 1, 1), target.repeat(2, 1, 1))
    assert two.item() == pytest.approx(one.item(), rel=1e-6)


def test_ohem_all_ignored_is_zero():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255, dtype=torch.long)
    loss = OhemCrossEntropy(0.7, min_kept=5)(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------ plain CE on an all-ignored batch

def test_ce_all_ignored_batch_is_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255, dtype=torch.long)
    loss = build_loss("ce")(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_ce_matches_torch_mean_when_pixels_are_valid():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0] = 255
    ref = nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert build_loss("ce", ignore_index=255)(logits, target).item() == pytest.approx(ref.item(), rel=1e-6)


# ------------------------------------------------------------------ val_resize grades on the original labels

class _RedIsOne(nn.Module):
    """An oracle: class 1 where the red channel is high, else class 0 (any input size)."""

    num_classes = 2

    def forward(self, x):
        r = x[:, :1]
        return torch.cat([-r, r], 1) * 10


def _folder_set(root, h=40, w=60, n=2):
    for split in ("val",):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            mask = np.zeros((h, w), np.uint8)
            img[:, : w // 3 + i, 0] = 255  # a boundary that a 2x-downsampled label would blur
            mask[:, : w // 3 + i] = 1
            mask[0, 0] = 255
            Image.fromarray(img).save(root / "images" / split / f"im{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"im{i}.png")
    (root / "classes.txt").write_text("background\nred\n")


def test_val_resize_keeps_the_label_size_and_resizes_predictions_back(tmp_path):
    from torch.utils.data import DataLoader

    from eseg_cli.data import build_dataset, build_transforms
    from eseg_cli.engine.evaluator import evaluate_model

    _folder_set(tmp_path)
    ds = build_dataset("folder", tmp_path, "val", transform=build_transforms(False, resize=(21, 29)))
    image, label = ds[0]
    assert image.shape[-2:] == (21, 29) and label.shape == (40, 60)
    cm = evaluate_model(_RedIsOne(), DataLoader(ds, batch_size=2), 2, torch.device("cpu"))
    m = cm.compute()
    assert m["pixels"] == 2 * (40 * 60 - 1)  # graded on every original label pixel
    assert m["pixAcc"] > 95.0
