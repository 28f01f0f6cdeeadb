"""Metrics equal scikit-learn's confusion-matrix based IoU / Dice on random masks, accumulated over batches."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, jaccard_score

from automl.metrics import SegmentationMeter


def test_multiclass_miou_equals_sklearn_confusion_matrix_with_ignore():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, (6, 16, 16))
    target[rng.random(target.shape) < 0.1] = 255
    predicted = np.where(rng.random(target.shape) < 0.6, np.clip(target, 0, 3), rng.integers(0, 4, target.shape))
    meter = SegmentationMeter("multiclass", 4, ignore_index=255)
    for start in (0, 2, 4):  # accumulated over batches
        meter.update_predictions(torch.from_numpy(predicted[start:start + 2]), torch.from_numpy(target[start:start + 2]))
    valid = target != 255
    cm = confusion_matrix(target[valid], predicted[valid], labels=range(4)).astype(float)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    np.testing.assert_array_equal(meter.per_class(), iou)
    assert meter.compute() == np.mean(iou)
    np.testing.assert_allclose(iou, jaccard_score(target[valid], predicted[valid], average=None), rtol=1e-12)


def test_multiclass_logits_use_argmax():
    logits = torch.tensor([[[[2.0, 0.0]], [[1.0, 3.0]]]])  # 1 x 2 classes x 1 x 2
    meter = SegmentationMeter("multiclass", 2)
    meter.update(logits, torch.tensor([[[0, 1]]]))
    assert meter.compute() == 1.0


def test_multilabel_dice_equals_sklearn_f1_per_class():
    rng = np.random.default_rng(1)
    target = rng.random((5, 3, 12, 12)) > 0.6
    predicted = np.where(rng.random(target.shape) < 0.7, target, rng.random(target.shape) > 0.5)
    meter = SegmentationMeter("multilabel", 3)
    logits = torch.from_numpy(np.where(predicted, 4.0, -4.0))  # sigmoid > 0.5 <=> predicted
    meter.update(logits, torch.from_numpy(target.astype(np.float32)))
    expected = [f1_score(target[:, c].ravel(), predicted[:, c].ravel()) for c in range(3)]
    np.testing.assert_allclose(meter.per_class(), expected, rtol=1e-12)
    assert abs(meter.compute() - np.mean(expected)) < 1e-12


def test_binary_iou_equals_sklearn_jaccard():
    rng = np.random.default_rng(2)
    target = (rng.random((4, 1, 10, 10)) > 0.7).astype(np.float32)
    predicted = rng.random(target.shape) > 0.6
    meter = SegmentationMeter("binary", 1)
    meter.update_predictions(torch.from_numpy(predicted), torch.from_numpy(target))
    assert abs(meter.compute() - jaccard_score(target.ravel(), predicted.ravel())) < 1e-12


def test_a_class_never_seen_nor_predicted_is_left_out():
    meter = SegmentationMeter("multiclass", 3)
    meter.update_predictions(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    assert np.isnan(meter.per_class()[2]) and meter.compute() == 1.0
