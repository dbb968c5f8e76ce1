"""Segmentation loss and metrics against hand-computed values."""
import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICES
from fastdnas.data import IGNORE_INDEX
from fastdnas.segmentation import SegmentationMetrics, confusion_matrix, iou_from_confusion, segmentation_loss

# 2 x 3 pixels, one ignored; 4 classes, class 3 in neither targets nor predictions.
TARGETS = torch.tensor([[[0, 0, 1], [1, 2, IGNORE_INDEX]]])
PREDICTIONS = torch.tensor([[[0, 1, 1], [1, 1, 2]]])
# By hand: (true, predicted) pairs (0,0) (0,1) (1,1) (1,1) (2,1); the ignored pixel drops out.
CONFUSION = [[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
# IoU = TP / (row + column - TP): class 0: 1 / (2 + 1 - 1), class 1: 2 / (2 + 4 - 2), class 2: 0 / (1 + 0 - 0).
IOUS = [0.5, 0.5, 0.0, None]


@pytest.mark.parametrize("device", DEVICES)
def test_confusion_matrix_and_iou_by_hand(device):
    confusion = confusion_matrix(PREDICTIONS.to(device), TARGETS.to(device), 4)
    assert confusion.device.type == device and confusion.dtype == torch.int64
    assert confusion.tolist() == CONFUSION
    ious, miou = iou_from_confusion(confusion.cpu())
    assert ious == IOUS
    assert miou == pytest.approx(1 / 3)  # the absent class does not count


@pytest.mark.parametrize("device", DEVICES)
def test_metrics_accumulate_over_batches(device):
    logits = F.one_hot(PREDICTIONS, 4).permute(0, 3, 1, 2).float().to(device)
    targets = TARGETS.to(device)
    metrics = SegmentationMetrics(device, 4)
    metrics.update(torch.tensor(0.5, device=device), logits, targets)
    # A second batch that is all correct, one pixel of class 3: adds (3,3) and (0,0) x 5.
    second_targets = torch.zeros_like(targets)
    second_targets[0, 0, 0] = 3
    metrics.update(torch.tensor(1.5, device=device), F.one_hot(second_targets, 4).permute(0, 3, 1, 2).float(),
                   second_targets)
    result = metrics.read()
    assert result["loss"] == pytest.approx(1.0)
    assert result["acc"] == pytest.approx((3 + 6) / (5 + 6))
    expected = [6 / 7, 2 / 4, 0.0, 1.0]  # class 0: TP 6, row 7, column 6
    assert result["iou"] == pytest.approx(expected)
    assert result["miou"] == pytest.approx(sum(expected) / 4)


def test_loss_skips_ignored_pixels():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 2, 3)
    loss, returned = segmentation_loss(lambda x: logits, None, TARGETS)
    assert returned is logits
    labelled = TARGETS != IGNORE_INDEX
    by_hand = -torch.log_softmax(logits, 1).permute(0, 2, 3, 1)[labelled].gather(1, TARGETS[labelled][:, None]).mean()
    assert loss.item() == pytest.approx(by_hand.item())


def test_empty_metrics_read_zero():
    result = SegmentationMetrics("cpu", 3).read()
    assert result == {"loss": 0.0, "acc": 0.0, "miou": 0.0, "iou": [None, None, None]}
