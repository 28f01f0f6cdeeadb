"""Small synthetic datasets a model can learn: textured shapes on noisy backgrounds, two images per group.

multiclass -> COCO JSON (shapes may overlap; later ones paint over earlier ones), multilabel -> one polygon
JSON per image (classes overlap, their colours add up), binary -> mask PNGs (0/255).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import yaml

from automl import store
from automl.errors import UserError

TASKS = ("multiclass", "multilabel", "binary")
CLASSES = {
    "multiclass": ["circle", "square", "triangle"],
    "multilabel": ["disk", "bar", "wedge"],
    "binary": ["blob"],
}
# Colour (RGB offset) and texture period of each class, so the classes are told apart by what they look like.
LOOKS = [((90, -30, -30), 4), ((-30, 80, -30), 6), ((-30, -30, 90), 3)]
SHAPES = {"circle": "circle", "square": "square", "triangle": "triangle", "disk": "circle", "bar": "bar",
          "wedge": "triangle", "blob": "circle"}


def polygon(kind: str, center: np.ndarray, radius: float, angle: float, size: int) -> np.ndarray:
    if kind == "circle":
        angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        radii = radius * np.ones_like(angles)
    elif kind == "square":
        angles, radii = np.arange(4) * np.pi / 2 + np.pi / 4, radius * np.ones(4)
    elif kind == "bar":
        angles = np.array([0.3, np.pi - 0.3, np.pi + 0.3, -0.3])
        radii = radius * 1.3 * np.ones(4)
    else:
        angles, radii = np.arange(3) * 2 * np.pi / 3, radius * np.ones(3)
    angles = angles + angle
    points = center + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return np.clip(np.round(points), 0, size - 1)


def texture(size: int, period: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    phase = rng.integers(period)
    return (((x + y + phase) // period) % 2 * 24 - 12).astype(np.float32)


def background(size: int, rng: np.random.Generator, brightness: float) -> np.ndarray:
    y, x = np.mgrid[:size, :size] / size
    gradient = 30 * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))
    base = brightness + gradient[..., None] + rng.normal(0, 18, (size, size, 3))
    return base.astype(np.float32)


def render(task: str, size: int, rng: np.random.Generator, brightness: float
           ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image and its shapes [(class index, polygon)], painted in order."""
    image = background(size, rng, brightness)
    n_shapes = rng.integers(1, 4) if task != "binary" else rng.integers(1, 3)
    shapes = []
    for _ in range(n_shapes):
        index = int(rng.integers(len(CLASSES[task])))
        kind = SHAPES[CLASSES[task][index]]
        center = rng.uniform(size * 0.2, size * 0.8, 2)
        points = polygon(kind, center, rng.uniform(size * 0.12, size * 0.25), rng.uniform(0, np.pi), size)
        region = np.zeros((size, size), np.uint8)
        cv2.fillPoly(region, [points.astype(np.int32).reshape(-1, 1, 2)], 1)
        colour, period = LOOKS[index]
        look = np.asarray(colour, np.float32) + texture(size, period, rng)[..., None]
        inside = region.astype(bool)
        if task == "multilabel":  # overlapping classes add up, so each stays visible
            image[inside] += look[inside]
        else:
            image[inside] = 120 + look[inside] + rng.normal(0, 10, (inside.sum(), 3))
        shapes.append((index, points))
    return np.clip(image, 0, 255).astype(np.uint8), shapes


def write_demo(out: str | Path, task: str = "multiclass", n: int = 48, size: int = 64, seed: int = 0) -> Path:
    """Write a demo dataset and its dataset.yaml into `out`; returns the dataset.yaml path."""
    if task not in TASKS:
        raise UserError(f"unknown task '{task}'", key="--task", fix=f"use one of {', '.join(TASKS)}")
    if n < 2 or size < 16:
        raise UserError(f"need --n >= 2 and --size >= 16, got n={n}, size={size}", key="--n/--size")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError("folder is not empty; the demo never writes over files", file=out,
                        fix="choose a new folder or remove this one")
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        group = i // 2
        if i % 2 == 0:
            brightness = rng.uniform(70, 130)  # both images of a group share their look
        image, shapes = render(task, size, rng, brightness)
        name = f"g{group:03d}_{i % 2}.png"
        cv2.imwrite(str(out / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        samples.append((name, shapes))
    labels = {"multiclass": _write_coco, "multilabel": _write_polygon_json, "binary": _write_masks}[task](
        out, samples, size)
    spec = {"name": f"demo-{task}", "task": task, "classes": CLASSES[task], "images": "images/*.png",
            "labels": labels, "groups": "(g\\d+)_"}
    path = out / "dataset.yaml"
    store.write_text(path, yaml.safe_dump(spec, sort_keys=False))
    return path


def _write_coco(out: Path, samples: list, size: int) -> dict:
    images, annotations = [], []
    for image_id, (name, shapes) in enumerate(samples, start=1):
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        for index, points in shapes:
            x0, y0 = points.min(axis=0)
            x1, y1 = points.max(axis=0)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": index + 1, "iscrowd": 0,
                "segmentation": [points.ravel().tolist()], "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": float(cv2.contourArea(points.astype(np.float32))),
            })
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES["multiclass"])]
    store.write_json(out / "annotations.json", {"images": images, "annotations": annotations,
                                                "categories": categories})
    return {"format": "coco", "path": "annotations.json"}


def _write_polygon_json(out: Path, samples: list, size: int) -> dict:
    for name, shapes in samples:
        annotations = [{"label": CLASSES["multilabel"][index], "points": points.tolist()} for index, points in shapes]
        store.write_text(out / "labels" / f"{Path(name).stem}.json",
                         json.dumps({"filename": name, "annotations": annotations}))
    return {"format": "polygon_json", "path": "labels"}


def _write_masks(out: Path, samples: list, size: int) -> dict:
    (out / "masks").mkdir(exist_ok=True)
    for name, shapes in samples:
        mask = np.zeros((size, size), np.uint8)
        for _, points in shapes:
            cv2.fillPoly(mask, [points.astype(np.int32).reshape(-1, 1, 2)], 255)
        cv2.imwrite(str(out / "masks" / name), mask)
    return {"format": "mask_png", "path": "masks"}
