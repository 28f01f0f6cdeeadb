"""The resize cache: a hit decodes nothing, an edited file is decoded again, original sizes are kept."""

from __future__ import annotations

import os

import numpy as np
import pytest

from automl.data import formats
from automl.data.cache import ResizeCache, resize_mask
from automl.data.dataset import SegmentationDataset
from automl.data.demo import write_demo


class DecodeCounter:
    def __init__(self, monkeypatch, dataset):
        self.images = self.masks = 0
        real_image, real_mask = formats.read_image, dataset.reader.read_mask

        def count_image(path):
            self.images += 1
            return real_image(path)

        def count_mask(*args):
            self.masks += 1
            return real_mask(*args)

        monkeypatch.setattr(formats, "read_image", count_image)
        monkeypatch.setattr(dataset.reader, "read_mask", count_mask)


@pytest.fixture(params=["multiclass", "multilabel", "binary"])
def demo_dataset(request, tmp_path):
    return SegmentationDataset.from_yaml(write_demo(tmp_path / "d", request.param, n=8, size=48))


def test_cache_hit_decodes_nothing(demo_dataset, tmp_path, monkeypatch):
    counter = DecodeCounter(monkeypatch, demo_dataset)
    cache = ResizeCache(demo_dataset, 32, root=tmp_path / "cache", workers=2)
    assert cache.ensure() == 8 and counter.images == 8 and counter.masks == 8
    first_epoch = [cache[i] for i in range(len(cache))]
    # a second epoch, and a new cache object over the same files (a new trial): no decode at all
    second_epoch = [ResizeCache(demo_dataset, 32, root=tmp_path / "cache")[i] for i in range(len(cache))]
    assert counter.images == 8 and counter.masks == 8
    for a, b in zip(first_epoch, second_epoch):
        assert isinstance(b.image, np.memmap) and b.image.shape == (32, 32, 3)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert b.orig_size == (48, 48)
    expected_mask = resize_mask(demo_dataset.load(3).mask, (32, 32))
    np.testing.assert_array_equal(second_epoch[3].mask, expected_mask)


def test_an_edited_label_invalidates_only_its_entry(tmp_path, monkeypatch):
    dataset = SegmentationDataset.from_yaml(write_demo(tmp_path / "d", "multilabel", n=6, size=32))
    ResizeCache(dataset, 16, root=tmp_path / "cache").ensure()
    label = dataset.label_files(2)[0]
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    counter = DecodeCounter(monkeypatch, dataset)
    cache = ResizeCache(dataset, 16, root=tmp_path / "cache")
    assert cache.missing() == [2]
    assert cache.ensure() == 1 and counter.masks == 1


def test_multilabel_masks_keep_their_channels_when_resized(rng):
    mask = rng.random((3, 40, 50)) > 0.5
    small = resize_mask(mask, (20, 25))
    assert small.shape == (3, 20, 25) and small.dtype == bool
    np.testing.assert_array_equal(small[1], mask[1, ::2, ::2])
    many = rng.random((600, 8, 8)) > 0.5  # more channels than one cv2.resize call takes
    np.testing.assert_array_equal(resize_mask(many, (4, 4)), many[:, ::2, ::2])
