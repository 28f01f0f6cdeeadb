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


def build_augmentation(name: str, crop: int | None = None, seed: int | None = None) -> A.Compose:
    """Albumentations keeps its own random state: `seed` makes a run repeatable."""
    transforms = AUGMENTATIONS.get(name)()
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
