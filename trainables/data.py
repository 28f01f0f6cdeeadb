"""What a training run reads: cached, resized samples of a dataset split into training and validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from automl.data.cache import ResizeCache
from automl.data.dataset import SegmentationDataset
from automl.data.formats import match_channels
from automl.data.splits import holdout, labelled_strata
from automl.data.stats import LabelStats
from trainables.augment import apply


@dataclass
class TrainData:
    """A dataset and which of its samples train and which validate (indices into dataset.records)."""

    dataset: SegmentationDataset
    train_indices: list[int]
    val_indices: list[int]

    @classmethod
    def from_ids(cls, dataset: SegmentationDataset, train_ids, val_ids) -> "TrainData":
        """A split saved as image ids (search_split.json, folds.json) on the dataset as it is read today."""
        position = dataset.index_of
        return cls(dataset, [position[i] for i in train_ids], [position[i] for i in val_ids])

    @classmethod
    def holdout_split(cls, dataset: SegmentationDataset, stats: LabelStats, val_fraction: float = 0.2,
                      seed: int = 0) -> "TrainData":
        """A seeded group holdout, stratified by the classes each image holds."""
        is_val = holdout(dataset.groups, labelled_strata(stats.pixels, dataset.spec.task, dataset.training_only),
                         val_fraction, seed, dataset.training_only)
        return cls(dataset, np.flatnonzero(~is_val).tolist(), np.flatnonzero(is_val).tolist())


class SegmentationTorchDataset(Dataset):
    """uint8 CHW images (`channels` of them) and task-shaped targets from the resize cache, augmented on the fly.

    Targets: multiclass HxW int64 (ignore_index kept), multilabel CxHxW float, binary 1xHxW float.
    """

    def __init__(self, cache: ResizeCache, indices: list[int], task: str, augmentation=None, channels: int = 3):
        self.cache, self.indices, self.task, self.augmentation = cache, list(indices), task, augmentation
        self.channels = channels

    def __len__(self) -> int:
        return len(self.indices)

    def augmented(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.cache[self.indices[item]]
        image, mask = match_channels(np.asarray(sample.image), self.channels), np.asarray(sample.mask)
        if self.augmentation is not None:
            image, mask = apply(self.augmentation, image, mask)
        return image, mask

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.augmented(item)
        for mixer in getattr(self.augmentation, "mixers", ()):
            if len(self) > 1 and np.random.rand() < mixer.p:
                other = (item + np.random.randint(1, len(self))) % len(self)  # any sample but this one
                image, mask = mixer.mix(image, mask, *self.augmented(other))
        image = torch.from_numpy(np.require(image.transpose(2, 0, 1), requirements=["C", "W"]))
        if self.task == "multiclass":
            return image, torch.from_numpy(mask.astype(np.int64))
        target = torch.from_numpy(mask.astype(np.float32))
        return image, target if self.task == "multilabel" else target.unsqueeze(0)
