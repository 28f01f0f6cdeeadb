"""Images as they come: 16-bit and float scaled (never truncated), 1/3/4 channels, EXIF orientation that
sizes and pixels agree on, COCO file_names from another machine, exclusion lists."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from automl.data import formats
from automl.data.cache import ResizeCache
from automl.data.dataset import SegmentationDataset
from automl.data.stats import label_stats
from automl.data.summary import inspect_dataset
from automl.single import run_single
from tests.conftest import random_image, write_image, write_json, write_yaml
from trainables.data import SegmentationTorchDataset
from trainables.train import Normalizer


def write_gray16_dataset(folder, n=6, size=40, peak=4095):
    """12-bit X-rays in 16-bit PNGs (max 4095) with a bright square labelled in binary masks."""
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, peak // 4, (size, size)).astype(np.uint16)
        image[10:30, 10:30] = rng.integers(peak // 2, peak + 1, (20, 20))
        image[0, 0] = peak
        image[1, 1] = 0
        mask = np.zeros((size, size), np.uint8)
        mask[10:30, 10:30] = 255
        write_image(folder / "images" / f"x{i}.png", image)  # cv2 writes uint16 as a 16-bit PNG
        write_image(folder / "masks" / f"x{i}.png", mask)
    return write_yaml(folder, name="xray", task="binary", classes=["bone"], images="images/*.png",
                      labels={"format": "mask_png", "path": "masks"})


def test_a_12_bit_image_reaches_the_model_with_its_full_range(tmp_path):
    dataset = SegmentationDataset.from_yaml(write_gray16_dataset(tmp_path))
    raw = cv2.imread(str(dataset.records[0].image), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.max() == 4095  # what OpenCV's IMREAD_COLOR would cut to 0..15
    image = formats.read_image(dataset.records[0].image)
    assert image.dtype == np.uint8 and image.shape == (40, 40, 1) and (image.min(), image.max()) == (0, 255)
    np.testing.assert_array_equal(image[..., 0], np.rint(raw.astype(np.float64) * 255 / 4095).astype(np.uint8))
    x, _ = SegmentationTorchDataset(ResizeCache(dataset, 32, root=tmp_path / "cache"), [0], "binary", channels=1)[0]
    assert x.shape == (1, 32, 32) and int(x.max()) > 200 and len(torch.unique(x)) > 100  # not 16 levels
    normalised = Normalizer(torch.device("cpu"), False, channels=1)(x[None])
    assert float(normalised.max() - normalised.min()) > 3.5  # the whole 0..255 range, in ImageNet units


def test_inspect_reports_bit_depth_and_channels_and_training_takes_one_channel(tmp_path, capsys):
    dataset_yaml = write_gray16_dataset(tmp_path, n=10)
    summary = inspect_dataset(dataset_yaml)
    assert summary["pixels"] == [("16-bit gray", 10)] and summary["input_channels"] == 1
    assert "scaled from its own min..max" in capsys.readouterr().out
    config = tmp_path / "trial.yaml"
    config.write_text("model: {arch: unet, encoder: tu-test_resnet}\ndata: {resize: 32, augment: none}\n"
                      "train: {epochs: 1, min_steps_per_epoch: 1}\n")
    lines = []
    run_single(config, dataset_yaml, tmp_path / "run", echo=lines.append)
    assert any("models take 1 input channel" in line for line in lines)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["in_channels"] == 1
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    first_conv = next(value for key, value in state.items() if key.endswith("weight") and value.ndim == 4)
    assert first_conv.shape[1] == 1


@pytest.mark.parametrize("kind", ["rgba", "palette", "gray_alpha", "float", "float_rgb", "rgb16", "rgb16_tiff"])
def test_every_pixel_format_decodes_to_uint8_with_one_or_three_channels(tmp_path, kind):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    path = tmp_path / ("x.tiff" if kind.startswith("float") or kind.endswith("tiff") else "x.png")
    if kind == "rgba":
        Image.fromarray(np.dstack([rgb, np.full((12, 16), 7, np.uint8)]), "RGBA").save(path)
        expected = rgb
    elif kind == "palette":
        Image.fromarray(rgb).convert("P").save(path)
        expected = np.asarray(Image.open(path).convert("RGB"))
    elif kind == "gray_alpha":  # stays one channel (OpenCV alone would repeat it into three)
        Image.fromarray(rgb[..., 0]).convert("LA").save(path)
        expected = rgb[..., :1]
    elif kind.startswith("float"):  # PIL cannot read a 3-channel float TIFF's header: it is decoded instead
        values = rng.uniform(-3, 5, (12, 16, 3 if kind == "float_rgb" else 1)).astype(np.float32)
        cv2.imwrite(str(path), cv2.cvtColor(values, cv2.COLOR_RGB2BGR) if kind == "float_rgb" else values[..., 0])
        expected = np.rint((values - values.min()) * 255 / (values.max() - values.min())).astype(np.uint8)
        assert formats.image_info(path).bits == 32
    else:  # 48-bit RGB: 16 bits per channel, as PNG or TIFF
        deep = rgb.astype(np.uint16) * 16  # 12-bit values
        cv2.imwrite(str(path), cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
        low, high = float(deep.min()), float(deep.max())
        expected = np.rint((deep - low) * 255 / (high - low)).astype(np.uint8)
        assert formats.image_info(path).bits == 16  # PIL alone would call it 8-bit RGB
    image = formats.read_image(path)
    assert image.dtype == np.uint8 and image.shape == expected.shape
    assert formats.image_info(path).channels == image.shape[2]  # the header read agrees with the pixels
    np.testing.assert_allclose(image.astype(int), expected.astype(int), atol=1)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_to_pixels_sizes_and_labels_alike(tmp_path, rng, orientation):
    stored = random_image(rng, 30, 50)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "photo.jpg")))
    height, width = shown.shape[:2]
    assert formats.image_size(tmp_path / "photo.jpg") == (height, width)
    pixels = formats.read_image(tmp_path / "photo.jpg")
    assert pixels.shape == shown.shape and np.abs(pixels.astype(int) - shown).mean() < 2
    # a label drawn on the image as displayed (what annotation tools show) fits it
    write_json(tmp_path / "labels" / "photo.json", {"annotations": [
        {"label": "thing", "points": [[0, 0], [width - 1, 0], [width - 1, 9], [0, 9]]}]})
    dataset_yaml = write_yaml(tmp_path, name="exif", task="binary", classes=["thing"], images="*.jpg",
                              labels={"format": "polygon_json", "path": "labels"})
    sample = SegmentationDataset.from_yaml(dataset_yaml).load(0)
    assert sample.orig_size == (height, width) and sample.mask[:10].all() and not sample.mask[10:].any()


def test_coco_file_names_from_another_machine_match_by_basename_said_once(tmp_path, rng):
    for name in ("IMG_1.JPG", "IMG_2.JPG", "IMG_3.JPG"):
        write_image(tmp_path / "images" / name, random_image(rng, 20, 30))
    square = [[2, 2], [12, 2], [12, 12], [2, 12]]
    coco = {"images": [{"id": 1, "file_name": "C:\\Users\\sami\\Desktop\\RGB\\Train\\IMG_1.JPG"},
                       {"id": 2, "file_name": "C:/Users/sami/Desktop/RGB/Train/IMG_2.JPG", "height": 20, "width": 30},
                       {"id": 3, "file_name": "D:/a/IMG_3.JPG", "height": 20, "width": 30},
                       {"id": 4, "file_name": "D:/b/IMG_3.JPG", "height": 20, "width": 30},  # ambiguous
                       {"id": 5, "file_name": "C:/x/IMG_9.JPG", "height": 20, "width": 30}],  # absent
            "categories": [{"id": 1, "name": "leaf"}],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "area": 9e9,
                             "segmentation": [sum(square, [])], "bbox": [2, 2, 10, 10]} for i in (1, 2, 3, 4)]}
    write_json(tmp_path / "coco.json", coco)
    dataset_yaml = write_yaml(tmp_path, name="v", task="multiclass", classes=["leaf"], images="images/*.JPG",
                              labels={"format": "coco", "path": "coco.json"})
    dataset = SegmentationDataset.from_yaml(dataset_yaml)
    assert dataset.ids == ["images/IMG_1.JPG", "images/IMG_2.JPG"]  # IMG_3 has two candidates: not guessed
    assert dataset.listing.unlabeled_images == ["images/IMG_3.JPG"]
    notes = [issue for issue in dataset.listing.issues if issue.kind == "basename_match"]
    assert len(notes) == 1 and notes[0].detail.startswith("2 images matched") and not notes[0].fatal
    assert dataset.load(0).mask[5, 5] == 1  # height/width absent from the entry: taken from the image


def test_a_path_match_wins_over_a_basename_twin(tmp_path, rng):
    for folder in ("a", "b"):
        write_image(tmp_path / folder / "x.png", random_image(rng, 8, 8))
    write_json(tmp_path / "coco.json", {"images": [{"id": 1, "file_name": "b/x.png", "height": 8, "width": 8}],
                                        "categories": [{"id": 1, "name": "c"}], "annotations": []})
    dataset_yaml = write_yaml(tmp_path, name="t", task="multiclass", classes=["c"], images="*/x.png",
                              labels={"format": "coco", "path": "coco.json"})
    dataset = SegmentationDataset.from_yaml(dataset_yaml)
    assert [(r.id, r.label) for r in dataset.records] == [("b/x.png", 1)]  # a/x.png does not borrow its labels
    assert dataset.listing.unlabeled_images == ["a/x.png"] and not dataset.listing.issues


def test_exclude_leaves_images_out_and_inspect_says_so(tmp_path, rng, capsys):
    for i in range(4):
        write_image(tmp_path / "images" / f"m{i}.png", random_image(rng, 16, 16))
        write_image(tmp_path / "masks" / f"m{i}.png", np.eye(16, dtype=np.uint8))
    (tmp_path / "excluded.txt").write_text("# noisy labels\nimages/m1.png\n\nimages/nope.png\n")
    dataset_yaml = write_yaml(tmp_path, name="e", task="binary", classes=["fg"], images="images/*.png",
                              labels={"format": "mask_png", "path": "masks"}, exclude="excluded.txt")
    dataset = SegmentationDataset.from_yaml(dataset_yaml)
    assert dataset.ids == ["images/m0.png", "images/m2.png", "images/m3.png"] and dataset.excluded == ["images/m1.png"]
    summary = inspect_dataset(dataset_yaml)
    out = capsys.readouterr().out
    assert summary["images"] == 3 and "1 images are excluded" in out and "1 ids in excluded.txt match no" in out
    assert label_stats(dataset).ids == dataset.ids
