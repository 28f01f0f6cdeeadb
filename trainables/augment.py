"""Named augmentation sets built with albumentations; masks move with their images.

Add a set in a few lines:

    @AUGMENTATIONS.register("mine")
    def mine():
        return [A.HorizontalFlip(), A.Blur(p=0.2)]
"""

from __future__ import annotations

import albumentations as A
import numpy as np

from trainables.registry import Registry

AUGMENTATIONS: Registry = Registry("augmentation set")


@AUGMENTATIONS.register("none")
def no_augmentation() -> list:
    return []


@AUGMENTATIONS.register("flip")
def flip() -> list:
    return [A.HorizontalFlip(p=0.5)]


@AUGMENTATIONS.register("light")
def light() -> list:
    return [*flip(), A.RandomBrightnessContrast(p=0.5)]


@AUGMENTATIONS.register("medium")
def medium() -> list:
    return [*light(), A.Affine(scale=(0.85, 1.15), translate_percent=(-0.06, 0.06), rotate=(-15, 15), p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.3),
            A.GridDropout(ratio=0.3, p=0.2)]


@AUGMENTATIONS.register("heavy")
def heavy() -> list:
    return [*medium(), A.ElasticTransform(alpha=30, sigma=6, p=0.2), A.GridDistortion(p=0.2),
            A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15),
                            hole_width_range=(0.05, 0.15), p=0.3)]


@AUGMENTATIONS.register("xray")
def xray() -> list:
    """What helped a hand-bone X-ray team: local contrast and sharpness, no geometry."""
    return [A.CLAHE(p=0.5), A.Sharpen(p=0.3), A.RandomBrightnessContrast(p=0.5), A.GridDropout(ratio=0.3, p=0.2)]


def mirror_permutation(num_outputs: int, swaps) -> list[int]:
    """Channel order after a horizontal flip: each mirrored pair trades places."""
    order = list(range(num_outputs))
    for a, b in swaps:
        order[a], order[b] = order[b], order[a]
    return order


class PairedHorizontalFlip(A.HorizontalFlip):
    """A horizontal flip that also swaps mirrored classes (a flipped left lung is a right lung): multilabel
    masks (HxWxC) swap channels, multiclass masks (HxW) swap values."""

    def __init__(self, swaps=(), p: float = 0.5):
        super().__init__(p=p)
        self.swaps = tuple((int(a), int(b)) for a, b in swaps)

    def apply_to_mask(self, mask: np.ndarray, **params) -> np.ndarray:
        flipped = super().apply_to_mask(mask, **params)
        if flipped.ndim == 3:
            return np.ascontiguousarray(flipped[..., mirror_permutation(flipped.shape[2], self.swaps)])
        values = np.arange(256, dtype=flipped.dtype)
        values[mirror_permutation(256, self.swaps)] = np.arange(256, dtype=flipped.dtype)
        return values[flipped]


def with_flip_policy(transforms: list, horizontal: bool = True, swaps=()) -> list:
    """The set's horizontal flips removed (horizontal=False) or made to swap the mirrored classes."""
    adjusted = []
    for transform in transforms:
        if isinstance(transform, A.HorizontalFlip):
            if not horizontal:
                continue
            if swaps:
                transform = PairedHorizontalFlip(swaps, p=transform.p)
        adjusted.append(transform)
    return adjusted


def build_augmentation(name: str, crop: int | None = None, seed: int | None = None, horizontal: bool = True,
                       swaps=()) -> A.Compose:
    """Albumentations keeps its own random state: `seed` makes a run repeatable. `horizontal` and `swaps`
    carry the dataset's flip policy (no horizontal flips, or flips that swap mirrored classes)."""
    transforms = with_flip_policy(AUGMENTATIONS.get(name)(), horizontal, swaps)
    if crop:
        transforms = [A.CropNonEmptyMaskIfExists(crop, crop), *transforms]
    return A.Compose(transforms, seed=seed)


def apply(pipeline: A.Compose, image, mask):
    """Run `pipeline` on an HxWx3 image and a HxW or CxHxW mask; the mask keeps its layout.

    Multilabel masks go through as HxWxC uint8 (OpenCV's remap refuses bool) and come back as CxHxW uint8.
    """
    if mask.ndim == 3:
        out = pipeline(image=image, mask=np.ascontiguousarray(mask.transpose(1, 2, 0), dtype=np.uint8))
        return out["image"], out["mask"].transpose(2, 0, 1)
    out = pipeline(image=image, mask=mask)
    return out["image"], out["mask"]
