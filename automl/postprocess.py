"""From probabilities to masks: thresholds, then postprocessing switched on per class only where it helps
the OOF metric (as nnU-Net decides it): keep the largest connected component, fill holes."""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes

from trainables.registry import Registry

OPERATIONS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("postprocessing operation")


def to_masks(probabilities: np.ndarray, task: str, thresholds=None) -> np.ndarray:
    """N x C x H x W probabilities -> masks in the labels' layout: N x H x W class indices (multiclass),
    N x H x W 0/1 (binary), N x C x H x W bool (multilabel). `thresholds`: one per channel (default 0.5)."""
    if task == "multiclass":
        return probabilities.argmax(axis=1).astype(np.uint8)
    cut = 0.5 if thresholds is None else np.asarray(thresholds, np.float32).reshape(1, -1, 1, 1)
    above = probabilities > cut
    return above[:, 0].astype(np.uint8) if task == "binary" else above


@OPERATIONS.register("largest_component")
def largest_component(binary: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if count <= 2:
        return binary.astype(bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


@OPERATIONS.register("fill_holes")
def fill_holes(binary: np.ndarray) -> np.ndarray:
    return binary_fill_holes(binary.astype(bool))


def operation_order() -> list[str]:
    """The order a plan applies its operations in (registration order: components first, then holes)."""
    return list(OPERATIONS.entries)


def apply_operation(mask: np.ndarray, task: str, operation: str, classes: list[int]) -> np.ndarray:
    """The operation on the given classes of one HxW (multiclass/binary) or CxHxW (multilabel) mask."""
    function = OPERATIONS.get(operation)  # an unknown name raises ValueError listing the valid ones
    expected_ndim = 3 if task == "multilabel" else 2
    if mask.ndim != expected_ndim:
        raise ValueError(f"a {task} mask must have {expected_ndim} dimensions, got shape {mask.shape}")
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
    unknown = [name for name in plan if name not in OPERATIONS.entries]
    if unknown:
        OPERATIONS.check(unknown[0])
    for operation in operation_order():
        classes = [c for c, on in enumerate(plan.get(operation, [])) if on]
        if classes:
            mask = apply_operation(mask, task, operation, classes)
    return mask


def candidate_classes(task: str, num_outputs: int) -> list[int]:
    return list(range(1, num_outputs)) if task == "multiclass" else list(range(num_outputs))


def to_original_size(probabilities, size: tuple[int, int]):
    """C x h x w probabilities (a torch tensor) -> C x H x W, bilinear: how predict brings every prediction
    back to its image's size."""
    import torch.nn.functional as F

    if tuple(probabilities.shape[-2:]) == tuple(size):
        return probabilities
    return F.interpolate(probabilities[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def final_mask(probabilities: np.ndarray, task: str, thresholds=None, plan: dict | None = None) -> np.ndarray:
    """One image's C x H x W probabilities -> its submitted mask: thresholds, then the postprocessing plan."""
    return apply_plan(to_masks(probabilities[None], task, thresholds)[0], task, plan)
