"""Per-sample label statistics (class pixel counts at the original size), read without decoding images."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from automl.data import formats
from automl.data.dataset import SegmentationDataset
from automl.data.formats import Issue
from automl.errors import UserError


@dataclass
class LabelStats:
    ids: list[str]
    groups: list[str]
    sizes: np.ndarray  # N x 2 (height, width)
    pixels: np.ndarray  # N x C pixel count per class (binary: C = 1, the foreground)
    issues: list[list[Issue]]

    @property
    def presence(self) -> np.ndarray:
        return self.pixels > 0

    @property
    def share(self) -> np.ndarray:
        """Fraction of all labelled pixels of the dataset that each class holds."""
        total = self.sizes.prod(axis=1).sum()
        return self.pixels.sum(axis=0) / max(total, 1)


def class_pixels(mask: np.ndarray, task: str, num_outputs: int) -> np.ndarray:
    if task == "multilabel":
        return mask.reshape(num_outputs, -1).sum(axis=1)
    if task == "binary":
        return np.array([(mask == 1).sum()])
    return np.bincount(mask.ravel(), minlength=256)[:num_outputs]


def label_stats(dataset: SegmentationDataset, workers: int = 4) -> LabelStats:
    spec = dataset.spec

    nothing = np.zeros(spec.num_outputs, np.int64)

    def one(index: int):
        try:
            height, width = formats.image_size(dataset.records[index].image)
        except UserError as e:
            if dataset.strict:
                raise
            return (0, 0), nothing, [Issue("unreadable_image", e.message)]
        try:
            mask, issues = dataset.read_mask(index, height, width)
        except UserError as e:
            if dataset.strict:
                raise
            return (height, width), nothing, [Issue("bad_label", e.line())]
        return (height, width), class_pixels(mask, spec.task, spec.num_outputs), issues

    with ThreadPoolExecutor(workers) as pool:  # PNG decoding and fillPoly release the GIL
        rows = list(pool.map(one, range(len(dataset))))
    return LabelStats(
        ids=dataset.ids,
        groups=dataset.groups,
        sizes=np.array([r[0] for r in rows], int).reshape(-1, 2),
        pixels=np.array([r[1] for r in rows], np.int64).reshape(len(rows), -1),
        issues=[r[2] for r in rows],
    )
