"""Submission writers: rle_csv, coco, png, polygon_json. Each gets (image path, mask) pairs one at a time.

Masks arrive at the image's original size: HxW uint8 class indices (multiclass, binary) or CxHxW bool
(multilabel). RLE CSV: `image_name,class,rle`, one row per image x class, runs as 1-based "start length"
pairs over the pixels in row-major order (left to right, then top to bottom) by default, or column-major
(top to bottom, then left to right, Kaggle's older convention) with order="column"; an empty mask is "".
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from automl import store
from automl.errors import UserError
from trainables.registry import Registry

WRITERS: Registry[type["Writer"]] = Registry("submission format")


def rle_encode(mask: np.ndarray, order: str = "row") -> str:
    """Binary HxW mask -> '1-based-start length start length ...' over the given pixel order."""
    pixels = np.asarray(mask, bool).ravel(order="F" if order == "column" else "C")
    padded = np.concatenate([[False], pixels, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    starts, ends = edges[::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))


def rle_decode(rle: str, shape: tuple[int, int], order: str = "row") -> np.ndarray:
    numbers = np.array(rle.split(), dtype=np.int64)
    flat = np.zeros(shape[0] * shape[1], bool)
    for start, length in zip(numbers[::2], numbers[1::2]):
        flat[start - 1:start - 1 + length] = True
    return flat.reshape(shape, order="F" if order == "column" else "C")


def class_masks(mask: np.ndarray, task: str, class_names: list[str]) -> Iterable[tuple[int, str, np.ndarray]]:
    """(index, name, binary mask) per class; multiclass skips the background (index 0)."""
    if task == "multilabel":
        for index, name in enumerate(class_names):
            yield index, name, mask[index]
    elif task == "binary":
        yield 0, class_names[0], mask == 1
    else:
        for index, name in enumerate(class_names):
            if index:
                yield index, name, mask == index


def polygons(binary: np.ndarray, single: bool = False) -> list[list[list[int]]]:
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = [c for c in contours if len(c) >= 3]
    if single and contours:
        contours = [max(contours, key=cv2.contourArea)]
    return [c.reshape(-1, 2).tolist() for c in contours]


class Writer:
    def __init__(self, out: Path, task: str, class_names: list[str], **options):
        self.out, self.task, self.class_names, self.options = Path(out), task, class_names, options
        self.stems: set[str] = set()

    def add(self, image_path: Path, image_id: str, mask: np.ndarray, probabilities: np.ndarray | None) -> None:
        raise NotImplementedError

    def file_stem(self, image_path: Path, image_id: str) -> str:
        """The image's own stem (so the polygon_json and mask_png readers match it), or its flattened id
        when two images share a stem."""
        stem = image_path.stem
        if stem in self.stems:
            stem = Path(image_id).with_suffix("").as_posix().replace("/", "__")
        self.stems.add(stem)
        return stem

    def close(self) -> None:
        pass


@WRITERS.register("rle_csv")
class RleCsvWriter(Writer):
    def __init__(self, out, task, class_names, **options):
        super().__init__(out, task, class_names, **options)
        self._atomic = store.atomic_path(self.out)
        self._file = open(self._atomic.__enter__(), "w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(["image_name", "class", "rle"])
        self.rows = 0

    def add(self, image_path, image_id, mask, probabilities):
        for _, name, binary in class_masks(mask, self.task, self.class_names):
            self._csv.writerow([image_path.name, name, rle_encode(binary, self.options.get("rle_order", "row"))])
            self.rows += 1

    def close(self):
        self._file.close()
        self._atomic.__exit__(None, None, None)


@WRITERS.register("coco")
class CocoWriter(Writer):
    """COCO results: one entry per image x non-empty class, pycocotools RLE and a mean-probability score."""

    def __init__(self, out, task, class_names, **options):
        super().__init__(out, task, class_names, **options)
        self.results, self.images = [], []

    def add(self, image_path, image_id, mask, probabilities):
        number = len(self.images) + 1
        self.images.append({"id": number, "file_name": image_id, "height": int(mask.shape[-2]),
                            "width": int(mask.shape[-1])})
        for index, name, binary in class_masks(mask, self.task, self.class_names):
            if not binary.any():
                continue
            rle = coco_mask.encode(np.asfortranarray(binary.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            score = float(probabilities[index if self.task != "binary" else 0][binary].mean()) \
                if probabilities is not None else 1.0
            self.results.append({"image_id": number, "file_name": image_id, "category_id": index if
                                 self.task == "multiclass" else index + 1, "category_name": name,
                                 "segmentation": rle, "score": score})

    def close(self):
        store.write_json(self.out, self.results)
        store.write_json(self.out.with_name(self.out.stem + "_images.json"), self.images)


@WRITERS.register("png")
class PngWriter(Writer):
    """Index PNGs in the folder `out` (multilabel: one sub-folder of 0/255 PNGs per class)."""

    def add(self, image_path, image_id, mask, probabilities):
        stem = self.file_stem(image_path, image_id)
        if self.task == "multilabel":
            for index, name in enumerate(self.class_names):
                self._write(self.out / name / f"{stem}.png", mask[index].astype(np.uint8) * 255)
        else:
            self._write(self.out / f"{stem}.png", mask.astype(np.uint8))

    @staticmethod
    def _write(path: Path, array: np.ndarray) -> None:
        ok, data = cv2.imencode(".png", array)
        with store.atomic_path(path) as tmp:
            tmp.write_bytes(data.tobytes())


@WRITERS.register("polygon_json")
class PolygonJsonWriter(Writer):
    """One JSON per image in the folder `out`, in the polygon_json reader's format."""

    def add(self, image_path, image_id, mask, probabilities):
        stem = self.file_stem(image_path, image_id)
        annotations = [{"label": name, "points": points}
                       for _, name, binary in class_masks(mask, self.task, self.class_names)
                       for points in polygons(binary, self.options.get("single_polygon", False))]
        store.write_text(self.out / f"{stem}.json", json.dumps({"filename": image_path.name,
                                                                 "annotations": annotations}))


def create_writer(name: str, out: Path, task: str, class_names: list[str], **options) -> Writer:
    try:
        writer = WRITERS.get(name)
    except ValueError as e:
        raise UserError(str(e), key="--format", fix=f"use one of {', '.join(WRITERS.names())}") from None
    return writer(out, task, class_names, **options)
