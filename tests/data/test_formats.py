"""Each reader against masks drawn independently (pycocotools annToMask, cv2.fillPoly), pixel for pixel."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from automl.config import load_dataset_spec
from automl.data.dataset import SegmentationDataset
from automl.errors import UserError
from tests.conftest import random_image, write_image, write_json, write_yaml

H, W = 32, 40
SQUARE = [[4, 4], [24, 4], [24, 20], [4, 20]]
TRIANGLE = [[15, 10], [38, 12], [20, 30]]  # overlaps SQUARE


def fill(points, value=1, shape=(H, W)) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.asarray(points, np.int32).reshape(-1, 1, 2)], value)
    return canvas


def write_coco(tmp_path, rng, task: str, classes: list[str]):
    write_image(tmp_path / "img" / "a" / "x1.png", random_image(rng, H, W))
    write_image(tmp_path / "img" / "b" / "x2.png", random_image(rng, H, W))
    coco = {
        "images": [{"id": 7, "file_name": "a/x1.png", "height": H, "width": W, "patient": "p1"},
                   {"id": 9, "file_name": "b/x2.png", "height": H, "width": W, "patient": "p1"}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 2, "iscrowd": 0, "segmentation": [sum(SQUARE, [])],
             "area": 1, "bbox": [4, 4, 20, 16]},
            {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": [sum(TRIANGLE, [])],
             "area": 1, "bbox": [15, 10, 23, 20]},
        ],
    }
    write_json(tmp_path / "coco.json", coco)
    return write_yaml(tmp_path, name="x", task=task, classes=classes, images="img/**/*.png",
                      labels={"format": "coco", "path": "coco.json"}, groups={"field": "patient"})


def test_coco_multiclass_later_annotation_paints_over_earlier(tmp_path, rng):
    path = write_coco(tmp_path, rng, "multiclass", ["dog", "cat"])
    dataset = SegmentationDataset.from_yaml(path)
    assert dataset.spec.class_names == ["background", "dog", "cat"]
    assert dataset.ids == ["img/a/x1.png", "img/b/x2.png"]
    assert dataset.groups == ["p1", "p1"]
    reference = COCO(str(tmp_path / "coco.json"))
    expected = np.zeros((H, W), np.uint8)
    for ann, index in zip(reference.imgToAnns[7], (1, 2)):  # dog -> 1, cat -> 2, in annotation order
        expected[reference.annToMask(ann).astype(bool)] = index
    sample = dataset.load(0)
    assert sample.mask.dtype == np.uint8
    np.testing.assert_array_equal(sample.mask, expected)
    assert (sample.mask == 2).sum() > 0 and (sample.mask == 1).sum() > 0
    assert sample.orig_size == (H, W) and sample.image.shape == (H, W, 3)
    np.testing.assert_array_equal(dataset.load(1).mask, 0)  # listed in COCO without annotations: empty


def test_coco_multilabel_keeps_overlaps(tmp_path, rng):
    path = write_coco(tmp_path, rng, "multilabel", ["cat", "dog"])
    dataset = SegmentationDataset.from_yaml(path)
    reference = COCO(str(tmp_path / "coco.json"))
    by_category = {ann["category_id"]: reference.annToMask(ann).astype(bool) for ann in reference.imgToAnns[7]}
    mask = dataset.load(0).mask
    assert mask.shape == (2, H, W) and mask.dtype == bool
    np.testing.assert_array_equal(mask[0], by_category[1])
    np.testing.assert_array_equal(mask[1], by_category[2])
    assert (mask[0] & mask[1]).sum() > 0  # the overlap is in both channels


def test_coco_category_not_in_classes_is_a_user_error(tmp_path, rng):
    path = write_coco(tmp_path, rng, "multiclass", ["dog"])
    with pytest.raises(UserError, match="category 'cat'.*not in classes"):
        SegmentationDataset.from_yaml(path)


def test_labelme_json_with_embedded_image(tmp_path, rng):
    image = random_image(rng, H, W)
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    write_json(tmp_path / "lm" / "case1.json", {
        "version": "5.0", "imagePath": "missing.png", "imageData": base64.b64encode(png.tobytes()).decode(),
        "imageHeight": H, "imageWidth": W,
        "shapes": [{"label": "bone", "points": SQUARE, "shape_type": "polygon"},
                   {"label": "tissue", "points": [[2, 3], [30, 25]], "shape_type": "rectangle"},
                   {"label": "bone", "points": [[1, 1], [5, 5]], "shape_type": "line"}],
    })
    path = write_yaml(tmp_path, name="x", task="multilabel", classes=["bone", "tissue"], images="lm/*.json",
                      labels={"format": "polygon_json", "path": "lm"})
    sample = SegmentationDataset.from_yaml(path).load(0)
    np.testing.assert_array_equal(sample.image, image)
    np.testing.assert_array_equal(sample.mask[0], fill(SQUARE).astype(bool))
    np.testing.assert_array_equal(sample.mask[1], fill([[2, 3], [30, 3], [30, 25], [2, 25]]).astype(bool))


def test_polygon_json_multiclass_and_groups(tmp_path, rng):
    for person, side in [("ID001", "L"), ("ID001", "R"), ("ID002", "L")]:
        write_image(tmp_path / "train" / person / f"img_{person}_{side}.png", random_image(rng, H, W))
        write_json(tmp_path / "json" / person / f"img_{person}_{side}.json", {"annotations": [
            {"label": "b", "points": SQUARE}, {"label": "a", "points": TRIANGLE}]})
    write_image(tmp_path / "train" / "other.png", random_image(rng, H, W))  # no label: left out
    path = write_yaml(tmp_path, name="x", task="multiclass", classes=["a", "b"], images="train/**/*.png",
                      labels={"format": "polygon_json", "path": "json"}, groups="(ID\\d+)")
    dataset = SegmentationDataset.from_yaml(path)
    assert dataset.groups == ["ID001", "ID001", "ID002"]
    assert dataset.listing.unlabeled_images == ["train/other.png"]
    expected = fill(SQUARE, 2)
    expected[fill(TRIANGLE).astype(bool)] = 1
    np.testing.assert_array_equal(dataset.load(2).mask, expected)


def test_polygon_label_not_in_classes_names_the_file(tmp_path, rng):
    write_image(tmp_path / "im" / "a.png", random_image(rng, H, W))
    write_json(tmp_path / "js" / "a.json", {"annotations": [{"label": "Radus", "points": SQUARE}]})
    path = write_yaml(tmp_path, name="x", task="multilabel", classes=["Radius"], images="im/*.png",
                      labels={"format": "polygon_json", "path": "js"})
    with pytest.raises(UserError) as info:
        SegmentationDataset.from_yaml(path).load(0)
    assert "a.json" in info.value.line() and "did you mean 'Radius'" in info.value.line()


def test_mask_png_multiclass_keeps_ignore_pixels_and_reads_palettes(tmp_path, rng):
    values = rng.integers(0, 3, (H, W)).astype(np.uint8)
    values[:5, :5] = 255
    write_image(tmp_path / "im" / "a.png", random_image(rng, H, W))
    palette = Image.fromarray(values, mode="P")
    palette.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [255, 255, 255] * 253)
    (tmp_path / "masks").mkdir()
    palette.save(tmp_path / "masks" / "a.png")
    path = write_yaml(tmp_path, name="x", task="multiclass", classes=["bg", "a", "b"], images="im/*.png",
                      labels={"format": "mask_png", "path": "masks"})
    spec = load_dataset_spec(path)
    assert spec.effective_ignore_index == 255 and spec.class_names == ["bg", "a", "b"]
    np.testing.assert_array_equal(SegmentationDataset(spec).load(0).mask, values)


def test_mask_png_binary_any_nonzero_is_foreground(tmp_path, rng):
    values = (rng.random((H, W)) > 0.5).astype(np.uint8) * 255
    write_image(tmp_path / "im" / "a.png", random_image(rng, H, W))
    write_image(tmp_path / "m" / "a.png", values)
    path = write_yaml(tmp_path, name="x", task="binary", classes=["hair"], images="im/*.png",
                      labels={"format": "mask_png", "path": "m"})
    np.testing.assert_array_equal(SegmentationDataset.from_yaml(path).load(0).mask, values // 255)


def test_mask_png_multilabel_one_folder_per_class(tmp_path, rng):
    square, triangle = fill(SQUARE), fill(TRIANGLE)
    for stem in ("a", "b"):
        write_image(tmp_path / "im" / f"{stem}.png", random_image(rng, H, W))
        write_image(tmp_path / "m" / "left" / f"{stem}.png", square * 255)
    write_image(tmp_path / "m" / "right" / "a.png", triangle)  # b has no 'right' mask: empty channel
    path = write_yaml(tmp_path, name="x", task="multilabel", classes=["left", "right"], images="im/*.png",
                      labels={"format": "mask_png", "path": "m"})
    dataset = SegmentationDataset.from_yaml(path)
    np.testing.assert_array_equal(dataset.load(0).mask, np.stack([square, triangle]).astype(bool))
    np.testing.assert_array_equal(dataset.load(1).mask, np.stack([square, 0 * square]).astype(bool))


def test_groups_regex_without_match_is_own_group(tmp_path, rng):
    for name in ("p1_a", "p1_b", "zzz"):
        write_image(tmp_path / "im" / f"{name}.png", random_image(rng, H, W))
        write_image(tmp_path / "m" / f"{name}.png", np.zeros((H, W), np.uint8))
    path = write_yaml(tmp_path, name="x", task="binary", classes=["fg"], images="im/*.png",
                      labels={"format": "mask_png", "path": "m"}, groups="(p\\d+)_")
    assert SegmentationDataset.from_yaml(path).groups == ["p1", "p1", "im/zzz.png"]
