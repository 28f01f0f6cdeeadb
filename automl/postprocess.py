"""Postprocessing of predicted masks, switched on per class only where it helps the OOF metric (as nnU-Net
decides it): keep the largest connected component, fill holes."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes

OPERATIONS = ("largest_component", "fill_holes")


def largest_component(binary: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if count <= 2:
        return binary.astype(bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def fill_holes(binary: np.ndarray) -> np.ndarray:
    return binary_fill_holes(binary.astype(bool))


def apply_operation(mask: np.ndarray, task: str, operation: str, classes: list[int]) -> np.ndarray:
    """The operation on the given classes of one HxW (multiclass/binary) or CxHxW (multilabel) mask."""
    function = largest_component if operation == "largest_component" else fill_holes
    mask = mask.copy()
    for c in classes:
        if task == "multilabel":
            mask[c] = function(mask[c])
            continue
        value = 1 if task == "binary" else c
        current = mask == value
        changed = function(current)
        mask[current & ~changed] = 0
        mask[changed & (mask == 0)] = value
    return mask


def apply_plan(mask: np.ndarray, task: str, plan: dict | None) -> np.ndarray:
    if not plan:
        return mask
    for operation in OPERATIONS:
        classes = [c for c, on in enumerate(plan.get(operation, [])) if on]
        if classes:
            mask = apply_operation(mask, task, operation, classes)
    return mask


def candidate_classes(task: str, num_outputs: int) -> list[int]:
    return list(range(1, num_outputs)) if task == "multiclass" else list(range(num_outputs))
