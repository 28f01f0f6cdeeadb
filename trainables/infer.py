"""Probabilities from a trained model: the activation of the task, on batches of cached uint8 images."""

from __future__ import annotations

import math
from typing import Callable

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
                          out_size: tuple[int, int] | None = None, batch_size: int = 8,
                          tile: int | None = None) -> np.ndarray:
    """N x H x W x channels uint8 images -> N x C x h x w float32 probabilities (resized to out_size if given).
    With `tile`, images larger than it are predicted in Gaussian-blended tiles of that side (a model trained
    on crops sees crop-sized inputs, as nnU-Net predicts its patches)."""
    model.eval()
    normalize = Normalizer(device, channels_last=device.type == "cuda", channels=images.shape[-1])
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = normalize(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size].transpose(0, 3, 1, 2))))
        if tile is not None and max(batch.shape[-2:]) > tile:
            probs = tiled_probabilities(lambda tiles: _forward(model, tiles, task), batch, tile)
        else:
            probs = _forward(model, batch, task)
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
        # other scales snap to multiples of 32; scale 1 keeps the size (`segment` pads any side)
        size = (height, width) if scale == 1.0 else (max(32, int(round(height * scale / 32)) * 32),
                                                     max(32, int(round(width * scale / 32)) * 32))
        scaled = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        views = [_forward(model, scaled, task)]
        if tta in ("flip", "flip+scale") and horizontal:
            flipped = _forward(model, scaled.flip(-1), task).flip(-1)
            views.append(flipped[:, mirror_permutation(flipped.shape[1], swaps)] if swaps else flipped)
        for view in views:
            outputs.append(view if size == (height, width) else
                           F.interpolate(view, size=(height, width), mode="bilinear", align_corners=False))
    return torch.stack(outputs).mean(dim=0)


# ---------------------------------------------------------------- sliding windows

def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Tile offsets along one side: evenly spread, at most `step` apart, the first at 0 and the last
    touching the far border (nnU-Net's placement)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def gaussian_weights(height: int, width: int, sigma_scale: float = 1 / 8) -> torch.Tensor:
    """nnU-Net's tile weights: a Gaussian centred on the tile (sigma = side / 8), 1 at the centre, floored
    at its smallest positive value so that border pixels still count where only one tile covers them."""
    axes = [torch.exp(-0.5 * ((torch.arange(side, dtype=torch.float64) - (side - 1) / 2) / (side * sigma_scale)) ** 2)
            for side in (height, width)]
    weights = axes[0][:, None] * axes[1][None, :]
    weights = weights / weights.max()
    return weights.clamp_min(weights[weights > 0].min()).float()


@torch.no_grad()
def tiled_probabilities(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int,
                        overlap: float = 0.25, batch: int = 4) -> torch.Tensor:
    """Probabilities of a normalised N x C x H x W batch, computed on tiles of `tile` pixels that overlap
    by `overlap` of a tile and blended with Gaussian weights. `forward` maps a batch of tiles to their
    probabilities (TTA included). Only `batch` tiles go through the model at once, so the model's memory
    does not grow with the image; the blended map (K x H x W floats per image) does."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    height, width = x.shape[-2:]
    tile_h, tile_w = min(tile, height), min(tile, width)
    step_h, step_w = max(1, int(tile_h * (1 - overlap))), max(1, int(tile_w * (1 - overlap)))
    positions = [(top, left) for top in tile_starts(height, tile_h, step_h) for left in tile_starts(width, tile_w, step_w)]
    weights = gaussian_weights(tile_h, tile_w).to(x.device)
    out = None  # N x K x H x W, filled with weighted sums in place, then divided in place
    norm = torch.zeros((height, width), device=x.device)
    for index, image in enumerate(x):
        for start in range(0, len(positions), batch):
            group = positions[start:start + batch]
            tiles = torch.stack([image[:, top:top + tile_h, left:left + tile_w] for top, left in group])
            probabilities = forward(tiles)
            if out is None:
                out = torch.zeros((len(x), probabilities.shape[1], height, width), device=x.device)
            for (top, left), p in zip(group, probabilities):
                out[index, :, top:top + tile_h, left:left + tile_w] += p * weights
                if index == 0:
                    norm[top:top + tile_h, left:left + tile_w] += weights
    return out.div_(norm)
