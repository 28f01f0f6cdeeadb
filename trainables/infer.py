"""Probabilities from a trained model: the activation of the task, on batches of cached uint8 images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trainables.augment import mirror_permutation
from trainables.models import segment
from trainables.train import Normalizer


def activate(logits: torch.Tensor, task: str) -> torch.Tensor:
    return logits.softmax(dim=1) if task == "multiclass" else logits.sigmoid()


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: np.ndarray, task: str, device: torch.device,
                          out_size: tuple[int, int] | None = None, batch_size: int = 8) -> np.ndarray:
    """N x H x W x channels uint8 images -> N x C x h x w float32 probabilities (resized to out_size if given)."""
    model.eval()
    normalize = Normalizer(device, channels_last=device.type == "cuda", channels=images.shape[-1])
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size].transpose(0, 3, 1, 2)))
        probs = activate(segment(model, normalize(batch)).float(), task)
        if out_size is not None and tuple(probs.shape[-2:]) != tuple(out_size):
            probs = F.interpolate(probs, size=out_size, mode="bilinear", align_corners=False)
        chunks.append(probs.cpu().numpy())
    return np.concatenate(chunks)


def to_uint8(probabilities: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(probabilities * 255), 0, 255).astype(np.uint8)


def _forward(model: torch.nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    return activate(segment(model, x).float(), task)


@torch.no_grad()
def tta_probabilities(model: torch.nn.Module, x: torch.Tensor, task: str, tta: str = "none",
                      scales: tuple[float, ...] = (1.0,), horizontal: bool = True, swaps=()) -> torch.Tensor:
    """Probabilities of a normalised batch, averaged over test-time augmentations, each undone first:
    none; flip (horizontal); flip+scale (every scale, each with its flip, resized back). The dataset's flip
    policy holds here too: horizontal=False drops the flipped views, `swaps` trades the channels of
    mirrored classes back after a flip (what the model calls left in a mirrored image is the right one)."""
    height, width = x.shape[-2:]
    outputs = []
    for scale in (scales if tta == "flip+scale" else (1.0,)):
        size = (max(32, int(round(height * scale / 32)) * 32), max(32, int(round(width * scale / 32)) * 32))
        scaled = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        views = [_forward(model, scaled, task)]
        if tta in ("flip", "flip+scale") and horizontal:
            flipped = _forward(model, scaled.flip(-1), task).flip(-1)
            views.append(flipped[:, mirror_permutation(flipped.shape[1], swaps)] if swaps else flipped)
        for view in views:
            outputs.append(view if size == (height, width) else
                           F.interpolate(view, size=(height, width), mode="bilinear", align_corners=False))
    return torch.stack(outputs).mean(dim=0)
