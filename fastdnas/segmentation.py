"""Segmentation loss and metrics: cross entropy that skips ignored pixels, and IoU from a confusion matrix.

``SegmentationMetrics`` has the interface of ``search.Metrics`` (``update(loss, logits, targets)``,
``read()``), so the search and training loops take it in its place. The confusion matrix is
accumulated on the device; ``read()`` is its only transfer to the host.
"""
import torch
import torch.nn.functional as F

from .data.segmentation import IGNORE_INDEX


def segmentation_loss(model, inputs, targets):
    """Mean per-pixel cross entropy of ``model(inputs)`` over the labelled pixels; returns (loss, logits)."""
    logits = model(inputs)
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX), logits


def confusion_matrix(predictions, targets, num_classes):
    """[num_classes, num_classes] int64 counts: row = true class, column = predicted class.

    Pixels whose target lies outside [0, num_classes) (``IGNORE_INDEX``) are left out. No host
    synchronisation: ignored pixels are counted in an extra bin that is dropped.
    """
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {list(predictions.shape)} and targets {list(targets.shape)} differ in shape")
    k = num_classes
    valid = (targets >= 0) & (targets < k)
    flat = torch.where(valid, targets * k + predictions, k * k).flatten()
    if flat.is_cuda:
        # torch.bincount reads its input's maximum back to the host to size its output (a sync
        # per batch); an index_add into a fixed-size vector does not.
        counts = torch.zeros(k * k + 1, dtype=torch.int64, device=flat.device)
        counts.index_add_(0, flat, torch.ones_like(flat))
    else:
        counts = torch.bincount(flat, minlength=k * k + 1)
    return counts[: k * k].reshape(k, k)


def iou_from_confusion(confusion):
    """Per-class IoU (a list; None for classes absent from both targets and predictions) and
    their mean over the classes present (mIoU; 0.0 if none)."""
    confusion = torch.as_tensor(confusion, dtype=torch.float64)
    true_positive = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    ious = [None if u == 0 else (tp / u) for tp, u in zip(true_positive.tolist(), union.tolist())]
    present = [iou for iou in ious if iou is not None]
    return ious, (sum(present) / len(present) if present else 0.0)


class SegmentationMetrics:
    """Loss, pixel accuracy, mIoU and per-class IoU over an epoch, accumulated on the device."""

    def __init__(self, device, num_classes):
        self.num_classes = num_classes
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.samples = 0

    def update(self, loss, logits, targets):
        n = targets.shape[0]
        self.loss_sum += loss.detach().double() * n
        self.samples += n
        self.confusion += confusion_matrix(logits.detach().argmax(1), targets, self.num_classes)

    def read(self):
        # One transfer: the loss sum rides along with the confusion matrix.
        values = torch.cat([self.loss_sum.reshape(1), self.confusion.flatten().double()]).tolist()
        loss_sum, confusion = values[0], torch.tensor(values[1:], dtype=torch.float64).reshape(self.confusion.shape)
        ious, miou = iou_from_confusion(confusion)
        labelled = confusion.sum().item()
        return {
            "loss": loss_sum / max(self.samples, 1),
            "acc": confusion.diagonal().sum().item() / max(labelled, 1),
            "miou": miou,
            "iou": ious,
        }
