"""ConfusionMatrix against hand-computed matrices (Cityscapes/ADE20K definitions)."""

import math

import pytest
import torch

from eseg_cli.engine.metrics import ConfusionMatrix


def test_hand_computed_matrix_and_metrics():
    # 3 classes; class 2 appears nowhere (neither truth nor prediction) -> left out of the mean
    target = torch.tensor([[0, 0, 0, 1], [1, 1, 255, 255]])
    pred = torch.tensor([[0, 0, 1, 1], [0, 1, 2, 0]])  # predictions on ignore pixels must not count
    cm = ConfusionMatrix(3, ignore_index=255, class_names=["a", "b", "c"])
    cm.update(pred, target)
    assert cm.mat.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    m = cm.compute()
    # IoU_a = 2 / (3 + 3 - 2) = 0.5 ; IoU_b = 2 / (3 + 3 - 2) = 0.5 ; c absent -> None
    assert m["per_class"]["a"]["IoU"] == pytest.approx(50.0)
    assert m["per_class"]["b"]["IoU"] == pytest.approx(50.0)
    assert m["per_class"]["c"]["IoU"] is None and m["per_class"]["c"]["Acc"] is None
    assert m["mIoU"] == pytest.approx(50.0)  # not 33.3: the absent class is not averaged in
    assert m["pixAcc"] == pytest.approx(100 * 4 / 6)
    assert m["mAcc"] == pytest.approx(100 * (2 / 3 + 2 / 3) / 2)
    assert m["fwIoU"] == pytest.approx(50.0)
    assert m["pixels"] == 6


def test_false_positive_only_class_counts_as_zero():
    # class 2 is predicted but never true: IoU 0, and it *is* in the mean (official definition)
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    m = cm.compute()
    iou0, iou1, iou2 = 1 / 2, 1.0, 0.0
    assert m["per_class"]["2"]["IoU"] == 0.0
    assert m["per_class"]["2"]["Acc"] is None  # no true pixels -> accuracy undefined
    assert m["mIoU"] == pytest.approx(100 * (iou0 + iou1 + iou2) / 3)
    assert m["mAcc"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    freq = [2 / 4, 2 / 4, 0]
    assert m["fwIoU"] == pytest.approx(100 * (freq[0] * iou0 + freq[1] * iou1))


def test_all_correct_is_100_and_accumulates():
    cm = ConfusionMatrix(19)
    for seed in range(3):
        t = torch.randint(0, 19, (2, 8, 8), generator=torch.Generator().manual_seed(seed))
        t[0, 0, 0] = 255
        cm.update(t.clone(), t)
    m = cm.compute()
    assert m["mIoU"] == m["pixAcc"] == m["mAcc"] == m["fwIoU"] == 100.0
    assert m["pixels"] == 3 * 2 * 64 - 3


def test_out_of_range_prediction_is_wrong_not_dropped():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 7]), torch.tensor([0, 1]))
    assert cm.mat.sum() == 1 and cm.invalid.tolist() == [0, 1]  # counted, as no class's prediction
    assert cm.compute()["pixAcc"] == pytest.approx(50.0)


def test_empty_matrix_and_shape_mismatch():
    cm = ConfusionMatrix(4)
    assert cm.compute()["mIoU"] == 0.0
    with pytest.raises(ValueError):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 3))


def test_csv_layout():
    cm = ConfusionMatrix(2, class_names=["road", "sky"])
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
    lines = cm.to_csv().splitlines()
    assert lines[0] == "true\\pred,road,sky"
    assert lines[1:] == ["road,1,1", "sky,0,1"]
    assert not any(math.isnan(float(v)) for v in lines[1].split(",")[1:])
