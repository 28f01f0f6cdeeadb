"""Decode and resize each sample once per target size; afterwards every epoch reads memory-mapped .npy files.

An entry is keyed by its source files (path, size, mtime), the target size and what the mask means
(task, classes, format, ignore_index): editing an image or a label, or the class list, makes a new entry.
Entries are written atomically, so trials that build the same cache at once only duplicate work.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from automl import store
from automl.data.dataset import SegmentationDataset

CV2_MAX_CHANNELS = 128  # cv2.resize refuses 256 channels and more
CACHE_FORMAT = 2  # 2: images keep their channel count (1 or 3); deep images are scaled, not truncated


@dataclass
class CachedSample:
    id: str
    image: np.ndarray  # HxWxC uint8, C = 1 or 3 (memory-mapped)
    mask: np.ndarray  # HxW uint8 or CxHxW bool (memory-mapped)
    orig_size: tuple[int, int]


def as_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """A target size: an int is a square side; a pair is (height, width)."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return int(height), int(width)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    return resized[..., None] if image.ndim == 3 and resized.ndim == 2 else resized  # cv2 drops a 1-channel axis


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour, so class indices stay class indices; CxHxW masks keep their layout."""
    height, width = size
    if mask.ndim == 2:
        if mask.shape == (height, width):
            return np.ascontiguousarray(mask)
        return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    channels_last = np.ascontiguousarray(mask.transpose(1, 2, 0).astype(np.uint8))
    chunks = [cv2.resize(np.ascontiguousarray(channels_last[..., i:i + CV2_MAX_CHANNELS]), (width, height),
                         interpolation=cv2.INTER_NEAREST).reshape(height, width, -1)
              for i in range(0, channels_last.shape[2], CV2_MAX_CHANNELS)]
    return np.concatenate(chunks, axis=2).transpose(2, 0, 1).astype(mask.dtype)  # bool, or a pseudo-label's uint8


class ResizeCache:
    """The samples of `dataset` at `size`, decoded once and then read memory-mapped."""

    def __init__(self, dataset: SegmentationDataset, size: int | tuple[int, int], root: str | Path | None = None,
                 workers: int = 4):
        self.dataset = dataset
        self.size = as_size(size)
        self.dir = Path(root or dataset.spec.cache_root) / f"{self.size[0]}x{self.size[1]}"
        self.workers = workers
        meaning = self._meaning()
        self.keys = [self._key(i, meaning) for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.dataset)

    def _meaning(self) -> str:
        spec = self.dataset.spec
        return json.dumps([CACHE_FORMAT, spec.task, spec.class_names, spec.classes, spec.labels.format,
                           spec.effective_ignore_index, self.size])

    def _key(self, index: int, meaning: str) -> str:
        sources = []
        for path in self.dataset.source_files(index):
            stat = path.stat()
            sources.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        return hashlib.sha1(json.dumps([meaning, sources]).encode()).hexdigest()[:24]

    def _paths(self, index: int) -> tuple[Path, Path, Path]:
        key = self.keys[index]
        base = self.dir / key[:2] / key
        return base.with_suffix(".image.npy"), base.with_suffix(".mask.npy"), base.with_suffix(".json")

    def is_cached(self, index: int) -> bool:
        return self._paths(index)[2].exists()  # the metadata is written last

    def missing(self, indices=None) -> list[int]:
        indices = range(len(self)) if indices is None else indices
        return [i for i in indices if not self.is_cached(i)]

    def ensure(self, indices=None) -> int:
        """Build the entries not cached yet (in threads: decoding and resizing release the GIL)."""
        todo = self.missing(indices)
        if todo:
            with ThreadPoolExecutor(self.workers) as pool:
                list(pool.map(self._build, todo))
        return len(todo)

    def _build(self, index: int) -> None:
        sample = self.dataset.load(index)
        image_path, mask_path, meta_path = self._paths(index)
        store.save_npy(image_path, resize_image(sample.image, self.size))
        store.save_npy(mask_path, resize_mask(sample.mask, self.size))
        store.write_json(meta_path, {"id": sample.id, "orig_size": list(sample.orig_size)})  # written last

    def __getitem__(self, index: int) -> CachedSample:
        image_path, mask_path, meta_path = self._paths(index)
        try:
            meta = store.read_json(meta_path)
        except FileNotFoundError:
            self._build(index)
            meta = store.read_json(meta_path)
        return CachedSample(meta["id"], np.load(image_path, mmap_mode="r"), np.load(mask_path, mmap_mode="r"),
                            tuple(meta["orig_size"]))

    def orig_size(self, index: int) -> tuple[int, int]:
        return tuple(store.read_json(self._paths(index)[2])["orig_size"])


def prebuild(dataset: SegmentationDataset, sizes, indices=None) -> None:
    """Decode each image once per distinct size before concurrent trials start, not once per trial."""
    for size in dict.fromkeys(as_size(size) for size in sizes):
        ResizeCache(dataset, size).ensure(indices)
