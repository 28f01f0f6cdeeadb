"""Dataset-level segmentation metrics from accumulated counts (higher is better).

multiclass: mIoU from a confusion matrix, ignore_index excluded; multilabel: mean per-class Dice of
sigmoid > threshold; binary: foreground IoU. A class with nothing to score (no label, no prediction) is
left out of the mean.
"""

from __future__ import annotations

import numpy as np
import torch

METRIC_NAME = {"multiclass": "mIoU", "multilabel": "Dice", "binary": "IoU"}


def predictions(logits: torch.Tensor, task: str, threshold: float = 0.5) -> torch.Tensor:
    if task == "multiclass":
        return logits.argmax(dim=1)
    return logits.sigmoid() > threshold


class SegmentationMeter:
    """Accumulates per-class counts over batches, on the batches' device; `compute()` gives the metric."""

    def __init__(self, task: str, num_outputs: int, ignore_index: int | None = None, threshold: float = 0.5):
        self.task, self.num_outputs = task, num_outputs
        self.ignore_index, self.threshold = ignore_index, threshold
        self.confusion: torch.Tensor | None = None  # multiclass: C x C (rows: label)
        self.counts: torch.Tensor | None = None  # sigmoid tasks: C x 3 (tp, fp, fn)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.update_predictions(predictions(logits, self.task, self.threshold), target)

    @torch.no_grad()
    def update_predictions(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        if self.task == "multiclass":
            valid = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
            index = target[valid].long() * self.num_outputs + predicted[valid].long()
            counts = torch.bincount(index, minlength=self.num_outputs ** 2).reshape(self.num_outputs, -1)
            self.confusion = counts if self.confusion is None else self.confusion + counts
            return
        predicted = predicted.bool().reshape(predicted.shape[0], self.num_outputs, -1)
        target = target.reshape(target.shape[0], self.num_outputs, -1)
        valid = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        truth = (target == 1) & valid
        predicted = predicted & valid
        tp = (predicted & truth).sum(dim=(0, 2))
        fp = (predicted & ~truth).sum(dim=(0, 2))
        fn = (~predicted & truth).sum(dim=(0, 2))
        counts = torch.stack([tp, fp, fn], dim=1)
        self.counts = counts if self.counts is None else self.counts + counts

    def per_class(self) -> np.ndarray:
        if self.task == "multiclass":
            confusion = self.confusion.double().cpu().numpy() if self.confusion is not None else np.zeros((1, 1))
            tp = np.diag(confusion)
            union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
            return np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
        tp, fp, fn = (self.counts.double().cpu().numpy().T if self.counts is not None else np.zeros((3, 1)))
        if self.task == "binary":
            union = tp + fp + fn
            return np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
        denominator = 2 * tp + fp + fn
        return np.divide(2 * tp, denominator, out=np.full_like(tp, np.nan), where=denominator > 0)

    def compute(self) -> float:
        values = self.per_class()
        return float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
