"""Named augmentation sets built with albumentations; masks move with their images.

Add a set in a few lines:

    @AUGMENTATIONS.register("mine")
    def mine():
        return [A.HorizontalFlip(), A.Blur(p=0.2)]

`cutmix` and `copypaste` also mix in a second training sample (itself augmented by the rest of the set):
a box of it, or the pixels of some of its classes. Every pixel keeps the labels of the image it came from.
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


class Mixer:
    """A step that takes pixels from a second sample; `mix` gets HxWxC images and HxW or CxHxW masks."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def region(self, other_mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def mix(self, image, mask, other_image, other_mask):
        """The image and mask with `region` taken from the other sample (pixels and every label with them)."""
        region = self.region(other_mask, image.shape[:2])
        image, mask = image.copy(), mask.copy()
        image[region] = other_image[region]
        if mask.ndim == 3:  # multilabel C x H x W: all channels move, so overlaps move with their pixels
            mask[:, region] = other_mask[:, region]
        else:
            mask[region] = other_mask[region]
        return image, mask


class CutMix(Mixer):
    """A box covering `area` (a fraction, drawn uniformly) of the image, from the other sample."""

    def __init__(self, p: float = 0.5, area: tuple[float, float] = (0.1, 0.4)):
        super().__init__(p)
        self.area = area

    def region(self, other_mask, shape):
        height, width = shape
        fraction = np.random.uniform(*self.area)
        aspect = np.exp(np.random.uniform(np.log(0.5), np.log(2.0)))
        box_h = int(np.clip(round(np.sqrt(fraction * height * width / aspect)), 1, height))
        box_w = int(np.clip(round(fraction * height * width / box_h), 1, width))
        top, left = np.random.randint(0, height - box_h + 1), np.random.randint(0, width - box_w + 1)
        region = np.zeros(shape, bool)
        region[top:top + box_h, left:left + box_w] = True
        return region


class CopyPaste(Mixer):
    """The pixels of a random non-empty subset of the other sample's foreground classes (simple copy-paste,
    Ghiasi et al. 2021, on class masks). `background` is the multiclass mask value that is not an object;
    pixels labelled `ignore_index` are never pasted."""

    def __init__(self, p: float = 0.5, background: int = 0, ignore_index: int = 255):
        super().__init__(p)
        self.background, self.ignore_index = background, ignore_index

    def region(self, other_mask, shape):
        if other_mask.ndim == 3:  # multilabel: channels are classes; only 1 marks an object (not ignore)
            objects = other_mask == 1
            chosen = self.subset([c for c in range(other_mask.shape[0]) if objects[c].any()])
            return objects[chosen].any(axis=0) if chosen else np.zeros(shape, bool)
        values = np.unique(other_mask)
        present = [v for v in values.tolist() if v not in (self.background, self.ignore_index)]
        return np.isin(other_mask, self.subset(present))

    @staticmethod
    def subset(classes: list[int]) -> list[int]:
        if not classes:
            return []
        keep = np.random.rand(len(classes)) < 0.5
        keep[np.random.randint(len(classes))] = True  # at least one
        return [c for c, k in zip(classes, keep) if k]


@AUGMENTATIONS.register("cutmix")
def cutmix() -> list:
    return [*light(), CutMix(p=0.5)]


@AUGMENTATIONS.register("copypaste")
def copypaste() -> list:
    return [*light(), CopyPaste(p=0.5)]


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


class Augmentation:
    """An albumentations pipeline (called like one) plus the mixers that need a second sample."""

    def __init__(self, pipeline: A.Compose, mixers=()):
        self.pipeline, self.mixers = pipeline, list(mixers)

    def __call__(self, **data):
        return self.pipeline(**data)


def build_augmentation(name: str, crop: int | None = None, seed: int | None = None, horizontal: bool = True,
                       swaps=(), ignore_index: int = 255) -> Augmentation:
    """Albumentations keeps its own random state: `seed` makes a run repeatable (mixers draw from numpy's,
    which the training loop seeds). `horizontal` and `swaps` carry the dataset's flip policy (no
    horizontal flips, or flips that swap mirrored classes)."""
    transforms = with_flip_policy(AUGMENTATIONS.get(name)(), horizontal, swaps)
    mixers = [t for t in transforms if isinstance(t, Mixer)]
    for mixer in mixers:
        if isinstance(mixer, CopyPaste):
            mixer.ignore_index = ignore_index
    transforms = [t for t in transforms if not isinstance(t, Mixer)]
    if crop:
        transforms = [A.CropNonEmptyMaskIfExists(crop, crop, ignore_values=[ignore_index]), *transforms]
    return Augmentation(A.Compose(transforms, seed=seed), mixers)


def apply(pipeline: A.Compose, image, mask):
    """Run `pipeline` on an HxWx3 image and a HxW or CxHxW mask; the mask keeps its layout.

    Multilabel masks go through as HxWxC uint8 (OpenCV's remap refuses bool) and come back as CxHxW uint8.
    """
    if mask.ndim == 3:
        out = pipeline(image=image, mask=np.ascontiguousarray(mask.transpose(1, 2, 0), dtype=np.uint8))
        return out["image"], out["mask"].transpose(2, 0, 1)
    out = pipeline(image=image, mask=mask)
    return out["image"], out["mask"]
