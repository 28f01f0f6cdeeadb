"""Submission writers and TTA: RLE against pycocotools, the CSV convention by hand, polygons round-trip,
TTA inverse transforms, postprocessing operations."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from automl.data.dataset import SegmentationDataset
from automl.postprocess import apply_plan, fill_holes, largest_component
from automl.submit import PolygonJsonWriter, RleCsvWriter, rle_decode, rle_encode
from tests.conftest import random_image, write_image, write_yaml
from trainables.infer import tta_probabilities


def uncompressed_counts(rle: str, size: int) -> list[int]:
    """1-based start/length runs -> COCO's alternating zero/one run lengths."""
    numbers = [int(v) for v in rle.split()]
    counts, position = [], 0
    for start, length in zip(numbers[::2], numbers[1::2]):
        counts += [start - 1 - position, length]
        position = start - 1 + length
    return counts + ([size - position] if size > position else [])


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trips_and_matches_pycocotools_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((rng.integers(1, 40), rng.integers(1, 40))) > rng.uniform(0.2, 0.8)
    for order in ("row", "column"):
        np.testing.assert_array_equal(rle_decode(rle_encode(mask, order), mask.shape, order), mask)
    # COCO RLE runs are column-major: the same runs, compressed by pycocotools, give its own encoding
    height, width = mask.shape
    ours = coco_mask.frPyObjects({"size": [height, width],
                                  "counts": uncompressed_counts(rle_encode(mask, "column"), mask.size)}, height, width)
    theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["counts"] == theirs["counts"]
    np.testing.assert_array_equal(coco_mask.decode(ours), mask)


def test_the_csv_convention_by_hand(tmp_path):
    mask = np.array([[0, 1, 1, 0],
                     [0, 0, 0, 0],
                     [1, 0, 0, 1],
                     [1, 0, 0, 1]], bool)
    assert rle_encode(mask, "row") == "2 2 9 1 12 2 16 1"  # 1-based, left to right, then down
    assert rle_encode(mask, "column") == "3 3 9 1 15 2"  # 1-based, top to bottom, then right (3,4 + 5 join)
    assert rle_encode(np.zeros((4, 4), bool)) == ""
    writer = RleCsvWriter(tmp_path / "sub.csv", "multiclass", ["background", "a", "b"])
    writer.add(tmp_path / "img.png", "img.png", mask.astype(np.uint8), None)
    writer.close()
    rows = list(csv.reader(open(tmp_path / "sub.csv")))
    assert rows == [["image_name", "class", "rle"], ["img.png", "a", "2 2 9 1 12 2 16 1"], ["img.png", "b", ""]]


def test_polygon_json_written_then_read_back_matches_the_masks(tmp_path, rng):
    masks = np.zeros((2, 64, 80), bool)
    cv2.circle(masks[0].view(np.uint8), (30, 30), 15, 1, -1)
    cv2.rectangle(masks[1].view(np.uint8), (20, 10), (70, 50), 1, -1)
    cv2.rectangle(masks[1].view(np.uint8), (5, 55), (15, 60), 1, -1)  # a second polygon of the same class
    image = write_image(tmp_path / "images" / "case.png", random_image(rng, 64, 80))
    writer = PolygonJsonWriter(tmp_path / "labels", "multilabel", ["disk", "box"])
    writer.add(image, "images/case.png", masks, None)
    path = write_yaml(tmp_path, name="x", task="multilabel", classes=["disk", "box"], images="images/*.png",
                      labels={"format": "polygon_json", "path": "labels"})
    read_back = SegmentationDataset.from_yaml(path).load(0).mask
    for c in range(2):
        iou = (read_back[c] & masks[c]).sum() / (read_back[c] | masks[c]).sum()
        assert iou > 0.95, (c, iou)
    single = PolygonJsonWriter(tmp_path / "single", "multilabel", ["disk", "box"], single_polygon=True)
    single.add(image, "images/case.png", masks, None)
    assert (tmp_path / "single" / "case.json").read_text().count('"box"') == 1


class PixelWise(torch.nn.Module):
    """A 1x1 convolution: flip-equivariant, so a correctly undone flip changes nothing."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.conv(x)


class LeftToRight(torch.nn.Module):
    """Logits that rise from left to right whatever the input: flip-sensitive."""

    def forward(self, x):
        ramp = torch.linspace(-3, 3, x.shape[-1]).view(1, 1, 1, -1)
        return ramp.expand(x.shape[0], 1, x.shape[-2], x.shape[-1])


def test_flip_tta_undoes_the_flip():
    x = torch.randn(2, 3, 32, 48)  # an asymmetric input
    model = PixelWise()
    none = tta_probabilities(model, x, "multiclass", "none")
    torch.testing.assert_close(tta_probabilities(model, x, "multiclass", "flip"), none)
    scaled = tta_probabilities(model, x, "multiclass", "flip+scale", (1.0, 2.0))
    assert scaled.shape == none.shape and (scaled - none).abs().mean() < 0.05
    sensitive = LeftToRight()
    plain = tta_probabilities(sensitive, x, "binary", "none")
    flipped = tta_probabilities(sensitive, x, "binary", "flip")
    torch.testing.assert_close(flipped, (plain + plain.flip(-1)) / 2)  # the flipped view was flipped back
    assert not torch.allclose(flipped, plain)


def test_postprocessing_operations():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:12, 2:12] = 2
    mask[5:8, 5:8] = 0  # a hole
    mask[15:17, 15:17] = 2  # a speck
    kept = largest_component(mask == 2)
    assert kept.sum() == (mask == 2).sum() - 4
    assert fill_holes(mask == 2)[6, 6]
    plan = {"largest_component": [False, False, True], "fill_holes": [False, False, True]}
    cleaned = apply_plan(mask, "multiclass", plan)
    assert cleaned[16, 16] == 0 and cleaned[6, 6] == 2 and (cleaned == 2).sum() == 100


def test_binary_masks_are_postprocessed_in_their_hxw_layout_and_bad_input_is_refused():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:12, 2:12] = 1
    mask[5:8, 5:8] = 0
    mask[15:17, 15:17] = 1
    plan = {"largest_component": [True], "fill_holes": [True]}
    cleaned = apply_plan(mask, "binary", plan)
    assert cleaned.shape == (20, 20) and cleaned.sum() == 100 and cleaned[16, 16] == 0
    from automl.postprocess import apply_operation, to_masks

    probabilities = np.zeros((2, 1, 20, 20), np.float32)
    probabilities[:, 0, 2:12, 2:12] = 0.9
    masks = to_masks(probabilities, "binary", [0.5])
    assert masks.shape == (2, 20, 20) and masks.dtype == np.uint8 and masks.sum() == 200
    with pytest.raises(ValueError, match="binary mask must have 2 dimensions"):
        apply_operation(mask[None], "binary", "fill_holes", [0])
    with pytest.raises(ValueError, match="unknown postprocessing operation 'fill_hole'; did you mean 'fill_holes'"):
        apply_operation(mask, "binary", "fill_hole", [0])
    with pytest.raises(ValueError, match="unknown postprocessing operation 'dilate'"):
        apply_plan(mask, "binary", {"dilate": [True]})
