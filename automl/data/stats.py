"""Per-sample statistics read without decoding images: header facts (size, channels, bit depth) and, per
class, the pixel count and the mean column of its pixels (where it sits, left to right) at the original size."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from automl.data import formats
from automl.data.dataset import SegmentationDataset
from automl.data.formats import ImageInfo, Issue
from automl.errors import UserError

UNREADABLE = ImageInfo(0, 0, 0, 0)


@dataclass
class LabelStats:
    ids: list[str]
    groups: list[str]
    sizes: np.ndarray  # N x 2 (height, width)
    pixels: np.ndarray  # N x C pixel count per class (binary: C = 1, the foreground)
    issues: list[list[Issue]]
    centre_x: np.ndarray | None = None  # N x C mean column of each class's pixels / width (NaN where absent)
    channels: np.ndarray | None = None  # N: 1 or 3 (0: unreadable)
    bits: np.ndarray | None = None  # N: bits per channel (0: unreadable)

    @property
    def presence(self) -> np.ndarray:
        return self.pixels > 0

    @property
    def share(self) -> np.ndarray:
        """Fraction of all labelled pixels of the dataset that each class holds."""
        total = self.sizes.prod(axis=1).sum()
        return self.pixels.sum(axis=0) / max(total, 1)

    @property
    def area_fraction(self) -> np.ndarray:
        """N x C: each class's share of its own image."""
        return self.pixels / np.maximum(self.sizes.prod(axis=1), 1)[:, None]

    def input_channels(self) -> int:
        return input_channels(self.channels if self.channels is not None else np.array([]))

    def subset(self, rows: np.ndarray) -> "LabelStats":
        """The statistics of these rows only (e.g. the labelled images, without pseudo-labelled ones)."""
        pick = (lambda a: None if a is None else a[rows])
        return LabelStats([self.ids[i] for i in rows], [self.groups[i] for i in rows], self.sizes[rows],
                          self.pixels[rows], [self.issues[i] for i in rows], pick(self.centre_x),
                          pick(self.channels), pick(self.bits))


def input_channels(channels: np.ndarray) -> int:
    """1 when every readable image is single-channel (a model can take it as it is), else 3."""
    readable = channels[channels > 0]
    return 1 if len(readable) and (readable == 1).all() else 3


def image_channels(dataset: SegmentationDataset, workers: int = 4) -> np.ndarray:
    """Channels of every image from its header alone (0 where it cannot be read)."""
    def one(index: int) -> int:
        try:
            return formats.image_info(dataset.records[index].image).channels
        except UserError:
            return 0

    with ThreadPoolExecutor(workers) as pool:
        return np.array(list(pool.map(one, range(len(dataset)))), int)


def class_pixels(mask: np.ndarray, task: str, num_outputs: int) -> np.ndarray:
    if task == "multilabel":  # == 1: a pseudo-label's unsure pixels (255) are no class
        return (mask.reshape(num_outputs, -1) == 1).sum(axis=1)
    if task == "binary":
        return np.array([(mask == 1).sum()])
    return np.bincount(mask.ravel(), minlength=256)[:num_outputs]


def class_centre_x(mask: np.ndarray, task: str, num_outputs: int) -> np.ndarray:
    """Mean column of each class's pixels as a fraction of the width (NaN for a class not present)."""
    width = mask.shape[-1]
    columns = (np.arange(width, dtype=np.float64) + 0.5) / width
    if task == "multilabel":
        counts = (mask.reshape(num_outputs, -1, width) == 1).sum(axis=1).astype(np.float64)  # C x W
    elif task == "binary":
        counts = (mask == 1).sum(axis=0, dtype=np.float64)[None]
    else:
        rows = np.broadcast_to(np.arange(width), mask.shape)
        counts = np.bincount((mask.astype(np.int64) * width + rows).ravel(),
                             minlength=256 * width)[:num_outputs * width].reshape(num_outputs, width).astype(np.float64)
    total = counts.sum(axis=1)
    return np.divide(counts @ columns, total, out=np.full(len(total), np.nan), where=total > 0)


def label_stats(dataset: SegmentationDataset, workers: int = 4) -> LabelStats:
    spec = dataset.spec
    nothing = np.zeros(spec.num_outputs, np.int64)
    nowhere = np.full(spec.num_outputs, np.nan)

    def one(index: int):
        try:
            info = formats.image_info(dataset.records[index].image)
        except UserError as e:
            if dataset.strict:
                raise
            return UNREADABLE, nothing, nowhere, [Issue("unreadable_image", e.message)]
        try:
            mask, issues = dataset.read_mask(index, info.height, info.width)
        except UserError as e:
            if dataset.strict:
                raise
            return info, nothing, nowhere, [Issue("bad_label", e.line())]
        return (info, class_pixels(mask, spec.task, spec.num_outputs),
                class_centre_x(mask, spec.task, spec.num_outputs), issues)

    with ThreadPoolExecutor(workers) as pool:  # PNG decoding and fillPoly release the GIL
        rows = list(pool.map(one, range(len(dataset))))
    n = len(rows)
    return LabelStats(
        ids=dataset.ids,
        groups=dataset.groups,
        sizes=np.array([(r[0].height, r[0].width) for r in rows], int).reshape(-1, 2),
        pixels=np.array([r[1] for r in rows], np.int64).reshape(n, -1),
        issues=[r[3] for r in rows],
        centre_x=np.array([r[2] for r in rows], np.float64).reshape(n, -1),
        channels=np.array([r[0].channels for r in rows], int),
        bits=np.array([r[0].bits for r in rows], int),
    )
