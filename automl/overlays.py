"""Image / label / prediction panels for a person to review (label noise, hard cases)."""

from __future__ import annotations

import cv2
import numpy as np

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
                    [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195]], np.float32)


def colorize(mask: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """RGB colours and a coverage mask (which pixels carry a class) of one HxW or CxHxW mask."""
    if task == "multilabel":
        channels = mask.astype(np.float32)
        colours = np.einsum("chw,cd->hwd", channels, PALETTE[np.arange(len(mask)) % len(PALETTE)])
        count = channels.sum(axis=0)
        return colours / np.maximum(count, 1)[..., None], count > 0
    labels = mask.astype(np.int64)
    covered = (labels > 0) & (labels != 255)
    colours = PALETTE[(labels - 1) % len(PALETTE)] if task == "multiclass" else np.broadcast_to(PALETTE[0], (*labels.shape, 3))
    return np.where(covered[..., None], colours, 0), covered


def overlay(image: np.ndarray, mask: np.ndarray, task: str, alpha: float = 0.5) -> np.ndarray:
    colours, covered = colorize(mask, task)
    blended = image.astype(np.float32)
    blended[covered] = (1 - alpha) * blended[covered] + alpha * colours[covered]
    return blended.astype(np.uint8)


def panel(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, task: str, side: int = 256) -> np.ndarray:
    """image | label | prediction, side by side, each scaled to `side` pixels high."""
    image = np.repeat(image, 3, axis=2) if image.ndim == 3 and image.shape[2] == 1 else image
    views = [image, overlay(image, label, task), overlay(image, prediction, task)]
    scale = side / image.shape[0]
    size = (max(1, int(round(image.shape[1] * scale))), side)
    gap = np.full((side, 4, 3), 255, np.uint8)
    resized = [cv2.resize(view, size, interpolation=cv2.INTER_NEAREST) for view in views]
    return np.concatenate([resized[0], gap, resized[1], gap, resized[2]], axis=1)


def save_png(path, rgb: np.ndarray) -> None:
    from automl import store

    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    with store.atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
