"""CutMix and copy-paste (issue 14 item 3): every pixel keeps the labels of the image it came from, for
multiclass, multilabel (overlaps included) and binary masks; what is pasted is a box or whole classes."""

from __future__ import annotations

import numpy as np
import pytest

import albumentations as A

from trainables.augment import AUGMENTATIONS, Augmentation, CopyPaste, CutMix, build_augmentation

H, W = 24, 32


def encoded(source: int, mask: np.ndarray) -> np.ndarray:
    """An image whose pixels say where they came from: channel 0 the source, channel 1 the label code."""
    code = mask if mask.ndim == 2 else np.tensordot(1 << np.arange(mask.shape[0]), mask, axes=1)  # bits
    return np.stack([np.full((H, W), source), code, np.zeros((H, W))], axis=-1).astype(np.uint8)


def decoded(image: np.ndarray, channels: int | None) -> np.ndarray:
    code = image[..., 1].astype(np.int64)
    return code if channels is None else np.stack([(code >> c) & 1 for c in range(channels)]).astype(np.uint8)


def random_masks(task: str, rng) -> tuple[np.ndarray, np.ndarray]:
    if task == "multiclass":  # classes 0..3 and some ignore (255) pixels
        masks = [rng.integers(0, 4, (H, W)).astype(np.uint8) for _ in range(2)]
        masks[1][:3] = 255
        return masks[0], masks[1]
    if task == "multilabel":  # 3 overlapping classes
        return tuple(((rng.random((3, H, W)) < 0.4)).astype(np.uint8) for _ in range(2))
    return tuple((rng.random((H, W)) < 0.3).astype(np.uint8) for _ in range(2))


@pytest.mark.parametrize("task", ["multiclass", "multilabel", "binary"])
@pytest.mark.parametrize("mixer", [CutMix(p=1.0), CopyPaste(p=1.0)], ids=["cutmix", "copypaste"])
def test_masks_follow_their_pixels_exactly(task, mixer):
    rng = np.random.default_rng(0)
    np.random.seed(0)
    channels = 3 if task == "multilabel" else None
    for _ in range(20):
        mask, other_mask = random_masks(task, rng)
        image, mask_out = mixer.mix(encoded(1, mask), mask, encoded(2, other_mask), other_mask)
        np.testing.assert_array_equal(decoded(image, channels), mask_out)  # the invariant, pixel by pixel
        came = image[..., 0] == 2
        assert came.any() or isinstance(mixer, CopyPaste)
        np.testing.assert_array_equal(mask_out[..., ~came], mask[..., ~came])  # the rest is untouched
        if isinstance(mixer, CutMix):  # a box of 10-40 % of the image
            rows, cols = np.flatnonzero(came.any(1)), np.flatnonzero(came.any(0))
            assert came.sum() == len(rows) * len(cols) and np.ptp(rows) == len(rows) - 1
            assert 0.05 <= came.mean() <= 0.45
        elif task == "multiclass":  # whole foreground classes of the other image, never background or ignore
            pasted = np.unique(other_mask[came]).tolist()
            assert 0 not in pasted and 255 not in pasted and pasted
            assert all(np.array_equal(came & (other_mask == v), other_mask == v) for v in pasted)
        else:
            assert came.any() and (other_mask.reshape(-1, H, W)[:, came].any(axis=0)).all()


def test_the_mixing_sets_are_registered_and_draw_a_second_sample_in_training(tmp_path):
    import torch

    from automl.data.cache import ResizeCache
    from automl.data.dataset import SegmentationDataset
    from automl.data.demo import write_demo
    from trainables.data import SegmentationTorchDataset

    assert {"cutmix", "copypaste"} <= set(AUGMENTATIONS.names())
    dataset = SegmentationDataset.from_yaml(write_demo(tmp_path, "multilabel", n=6, size=32))
    cache = ResizeCache(dataset, 32)
    cache.ensure(range(6))
    built = build_augmentation("cutmix", seed=0)
    assert [type(m) for m in built.mixers] == [CutMix] and built.mixers[0].p == 0.5
    assert not any(isinstance(t, CutMix) for t in built.pipeline.transforms)  # albumentations never sees it
    only_cutmix = Augmentation(A.Compose([]), [CutMix(p=1.0)])
    mixed = SegmentationTorchDataset(cache, list(range(6)), "multilabel", only_cutmix)
    plain = SegmentationTorchDataset(cache, list(range(6)), "multilabel", build_augmentation("none"))
    np.random.seed(0)
    for i in range(6):
        (image, mask), (plain_image, plain_mask) = mixed[i], plain[i]
        assert not torch.equal(image, plain_image)  # a box of another sample landed in it
        outside = (image == plain_image).all(0)
        assert torch.equal(mask[:, outside], plain_mask[:, outside])


def test_copy_paste_never_pastes_ignored_pixels():
    np.random.seed(0)
    mixer = CopyPaste(p=1.0, ignore_index=255)
    other = np.zeros((2, H, W), np.uint8)
    other[0, :4] = 1  # an object
    other[:, 10:] = 255  # ignored in every channel
    for _ in range(10):
        _, mask = mixer.mix(np.zeros((H, W, 3), np.uint8), np.zeros((2, H, W), np.uint8), np.ones((H, W, 3), np.uint8), other)
        assert (mask[:, :4] == other[:, :4]).all() and (mask[:, 4:] == 0).all()
    labels = np.zeros((H, W), np.uint8)
    labels[:4], labels[10:] = 2, 255
    for _ in range(10):
        _, mask = mixer.mix(np.zeros((H, W, 3), np.uint8), np.zeros((H, W), np.uint8), np.ones((H, W, 3), np.uint8), labels)
        assert (mask[:4] == 2).all() and (mask[4:] == 0).all()
