"""Label readers, registered by name: each turns one labelled image into a mask.

A reader lists the labelled images of a dataset (`records`) and paints the mask of one of them
(`read_mask`). Masks are HxW uint8 for multiclass (pixel = class index, `ignore_index` kept) and binary
(0/1), and CxHxW bool for multilabel. What a reader notices on the way (an unknown class, a polygon
outside the image) comes back as `Issue`s: the training path raises on the fatal ones, the audit lists them.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import io
import json
import re
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np
from PIL import Image

from automl.config import DatasetSpec, GroupField
from automl.errors import UserError
from trainables.registry import Registry, close_matches

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".json"}


@dataclass(frozen=True)
class Record:
    """One labelled image: where it is, which group it belongs to, and where its labels are."""

    id: str  # image path relative to the dataset root, '/'-separated
    image: Path
    group: str
    label: Any = None  # reader-specific: a label file, or a COCO image id
    training_only: bool = False  # a pseudo-labelled image: trained on, never validated or scored


@dataclass(frozen=True)
class Issue:
    kind: str  # unknown_class | outside_image | size_mismatch | bad_label | basename_match | ...
    detail: str
    fatal: bool = True


@dataclass
class Sample:
    id: str
    group: str
    image: np.ndarray  # HxWxC uint8: C = 1 (gray) or 3 (RGB)
    mask: np.ndarray  # HxW uint8, or CxHxW bool for multilabel
    orig_size: tuple[int, int]  # (height, width) of the source image


@dataclass
class Listing:
    records: list[Record]
    unlabeled_images: list[str] = field(default_factory=list)  # images with no label
    orphan_labels: list[str] = field(default_factory=list)  # labels with no image
    issues: list[Issue] = field(default_factory=list)  # dataset-level problems (e.g. COCO categories)


# ---------------------------------------------------------------- images

# PIL modes that decode to one channel, with their bits per channel (PNG headers are read for the rest).
ONE_CHANNEL_MODES = {"1": 1, "L": 8, "LA": 8, "La": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32,
                     "F": 32}
EXIF_ORIENTATION = 0x0112
# cv2 keeps the bit depth and a gray image's single channel; orientation is applied below, from the same
# EXIF tag the size is read from, so pixels and sizes always agree.
DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR | cv2.IMREAD_IGNORE_ORIENTATION


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: size as displayed (EXIF orientation applied), channels and bits per channel."""

    height: int
    width: int
    channels: int  # 1 or 3: what read_image returns
    bits: int  # 8, 16, 32 (float or int32), 1 (bilevel)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image as HxWxC uint8 with C = 1 (gray) or 3 (RGB); alpha is dropped.

    16-bit, 32-bit and float images are scaled per image from their own min..max to 0..255 (never
    truncated to a byte); EXIF orientation is applied. A LabelMe JSON yields its embedded (or referenced) image.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        return _read_labelme_image(path)
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise UserError(f"cannot read this image: {e.strerror}", file=path) from None
    return decode_image(data, path, *_header(path))


def decode_image(data: np.ndarray, source: str | Path, orientation: int = 1, mode: str = "") -> np.ndarray:
    image = cv2.imdecode(data, DECODE_FLAGS) if data.size else None
    if image is None:
        raise UserError("cannot decode this image", file=source,
                        fix="replace or remove the file; `automl data audit` lists all such files")
    if image.ndim == 2:
        image = image[..., None]
    elif mode in ONE_CHANNEL_MODES:  # gray + alpha: OpenCV repeats the gray value into B, G and R
        image = image[..., :1]
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        image = image if image.ndim == 3 else image[..., None]
    return np.ascontiguousarray(orient(to_uint8(image), orientation))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit stays as it is; deeper images are stretched from their own min..max to 0..255."""
    if image.dtype == np.uint8:
        return image
    values = image.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(image.shape, np.uint8)
    low, high = float(values[finite].min()), float(values[finite].max())
    values = np.where(finite, values, low)
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) the way PIL's ImageOps.exif_transpose does."""
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return image.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(image, -1)
    if orientation == 7:
        return image[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(image, 1)
    return image


def _header(source) -> tuple[int, str]:
    """(EXIF orientation, PIL mode); (1, "") where PIL cannot read the header (OpenCV may still decode it)."""
    try:
        with Image.open(source) as im:
            return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1), im.mode
    except Exception:
        return 1, ""


def image_info(path: str | Path) -> ImageInfo:
    """Size, channels and bit depth from the header, without decoding the pixels where the format allows."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = _load_json(path)
        if "imageHeight" in data and "imageWidth" in data:
            return ImageInfo(int(data["imageHeight"]), int(data["imageWidth"]), 3, 8)
        image = read_image(path)
        return ImageInfo(image.shape[0], image.shape[1], image.shape[2], 8)
    try:
        with Image.open(path) as im:
            width, height = im.size
            mode, orientation = im.mode, int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
            depth = _png_bit_depth(path) if im.format == "PNG" else _tiff_bit_depth(im)
    except Exception:
        return _decoded_info(path)  # a header PIL does not know (multi-channel float TIFF): decode it
    if orientation in (5, 6, 7, 8):
        height, width = width, height
    channels = 1 if mode in ONE_CHANNEL_MODES else 3
    return ImageInfo(height, width, channels, depth or ONE_CHANNEL_MODES.get(mode, 8))


def _decoded_info(path: Path) -> ImageInfo:
    data = np.fromfile(path, np.uint8)
    raw = cv2.imdecode(data, DECODE_FLAGS) if data.size else None
    if raw is None:
        raise UserError("cannot read this image", file=path,
                        fix="replace or remove the file; `automl data audit` lists all such files")
    return ImageInfo(raw.shape[0], raw.shape[1], 1 if raw.ndim == 2 else 3, raw.dtype.itemsize * 8)


def _tiff_bit_depth(im) -> int | None:
    """Bits per channel from a TIFF's BitsPerSample tag (PIL shows 16-bit RGB as 8-bit RGB)."""
    bits = getattr(im, "tag_v2", {}).get(258) if im.format == "TIFF" else None
    return int(bits[0] if isinstance(bits, (tuple, list)) else bits) if bits else None


def _png_bit_depth(path: Path) -> int | None:
    """Bits per channel from the PNG header (PIL reports 48-bit RGB as 8-bit RGB); palettes count as 8."""
    with open(path, "rb") as f:
        header = f.read(26)
    if len(header) < 26:
        return None
    depth, colour_type = header[24], header[25]
    return 8 if colour_type == 3 else depth


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) as displayed (EXIF orientation applied), without decoding the pixels."""
    info = image_info(path)
    return info.height, info.width


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """An HxWxC image with the channels a model takes: gray is repeated to RGB, RGB is turned to gray."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[..., None]


def _read_labelme_image(path: Path) -> np.ndarray:
    data = _load_json(path)
    if data.get("imageData"):
        try:
            buffer = np.frombuffer(base64.b64decode(data["imageData"]), np.uint8)
        except ValueError:
            raise UserError("imageData is not base64", file=path, key="imageData") from None
        try:
            return decode_image(buffer, path, *_header(io.BytesIO(buffer.tobytes())))
        except UserError:
            raise UserError("imageData is not a decodable image", file=path, key="imageData") from None
    if data.get("imagePath"):
        return read_image(path.parent / data["imagePath"])
    raise UserError("a LabelMe JSON matched by `images` has neither imageData nor imagePath", file=path,
                    fix="point `images` at the image files instead")


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read JSON: {e}", file=path, fix="repair or remove the file") from None
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", file=path)
    return data


def list_images(spec: DatasetSpec) -> list[Path]:
    pattern = str(spec.root / spec.images)  # an absolute `images` glob stays absolute
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    paths = [p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise UserError(f"the glob '{spec.images}' matches no image under {spec.root}", file=spec.source,
                        key="images", fix="write a glob relative to the dataset.yaml, e.g. images/**/*.png")
    return paths


def relative_id(spec: DatasetSpec, path: Path) -> str:
    try:
        return path.resolve().relative_to(spec.root).as_posix()
    except ValueError:
        return path.resolve().as_posix()


# ---------------------------------------------------------------- masks

class MaskCanvas:
    """Paints class regions into the mask layout of the task."""

    def __init__(self, spec: DatasetSpec, height: int, width: int):
        self.task = spec.task
        self.height, self.width = height, width
        if self.task == "multilabel":
            self.array = np.zeros((spec.num_outputs, height, width), np.uint8)
        else:
            self.array = np.zeros((height, width), np.uint8)

    def _target(self, index: int) -> tuple[np.ndarray, int]:
        if self.task == "multilabel":
            return self.array[index], 1
        return self.array, 1 if self.task == "binary" else index

    def fill_polygon(self, index: int, points: np.ndarray) -> None:
        target, value = self._target(index)
        cv2.fillPoly(target, [np.round(points).astype(np.int32).reshape(-1, 1, 2)], value)

    def fill_region(self, index: int, region: np.ndarray) -> None:
        target, value = self._target(index)
        target[region.astype(bool)] = value

    def result(self) -> np.ndarray:
        return self.array.astype(bool) if self.task == "multilabel" else self.array


def class_indexer(spec: DatasetSpec) -> Callable[[str], int | None]:
    """Label name -> output index (None for a name not in `classes`)."""
    if spec.task == "binary":
        names = set(spec.classes)
        return lambda name: 0 if name in names else None
    lookup = {name: i for i, name in enumerate(spec.class_names)}
    return lookup.get


def outside_issue(points: np.ndarray, height: int, width: int, label: str) -> Issue | None:
    xs, ys = points[:, 0], points[:, 1]
    if xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height:
        return Issue("outside_image", f"polygon of '{label}' reaches ({xs.min():.0f}..{xs.max():.0f}, "
                                      f"{ys.min():.0f}..{ys.max():.0f}) outside {width}x{height}; clipped",
                     fatal=False)
    return None


def unknown_class_issue(label: str, spec: DatasetSpec) -> Issue:
    close = close_matches(label, spec.classes, n=1)
    return Issue("unknown_class", f"label '{label}' is not in classes" + (f"; did you mean '{close[0]}'?" if close else ""))


# ---------------------------------------------------------------- registry

READERS: Registry[type["Reader"]] = Registry("label format")


def register_reader(name: str) -> Callable[[type["Reader"]], type["Reader"]]:
    def add(cls: type["Reader"]) -> type["Reader"]:
        cls.name = name
        return READERS.register(name)(cls)
    return add


def check_format(name: str, file: str | Path | None = None) -> None:
    try:
        READERS.check(name)
    except ValueError as e:
        raise UserError(str(e), file=file, key="labels.format",
                        fix=f"valid formats: {', '.join(READERS.names())}") from None


def create_reader(spec: DatasetSpec) -> "Reader":
    check_format(spec.labels.format, file=spec.source)
    return READERS.get(spec.labels.format)(spec)


class Reader(ABC):
    name = ""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.index_of = class_indexer(spec)
        self.group_regex = re.compile(spec.groups) if isinstance(spec.groups, str) else None

    @abstractmethod
    def listing(self) -> Listing:
        """Every image the `images` glob matches, sorted into labelled records and the rest."""

    @abstractmethod
    def read_mask(self, record: Record, height: int, width: int) -> tuple[np.ndarray, list[Issue]]:
        """The mask of one record at the image's own size, plus what was noticed painting it."""

    def label_files(self, record: Record) -> list[Path]:
        """Files whose change must invalidate cached arrays of this record."""
        return [record.label] if isinstance(record.label, Path) else []

    def group_of(self, image_id: str, fields: dict | None = None) -> str:
        if isinstance(self.spec.groups, GroupField):
            value = (fields or {}).get(self.spec.groups.field)
            return str(value) if value is not None else image_id
        if self.group_regex is not None:
            match = self.group_regex.search(image_id)
            if match:
                return match.group(1) if match.groups() else match.group(0)
        return image_id

    def _listing_by_stem(self, folder: Path, suffix: str) -> Listing:
        """One label file per image in `folder`, matched by file stem."""
        if not folder.is_dir():
            raise UserError(f"{self.name} labels need a folder of {suffix} files", file=self.spec.source,
                            key="labels.path", fix=f"point it at a folder, not {folder.name}")
        matcher = StemMatcher(folder, {suffix})
        records, unlabeled = [], []
        for path in list_images(self.spec):
            image_id = relative_id(self.spec, path)
            label = matcher.match(path)
            if label is None:
                unlabeled.append(image_id)
            else:
                records.append(Record(image_id, path, self.group_of(image_id), label))
        image_paths = {r.image.resolve() for r in records}
        orphans = [relative_id(self.spec, p) for p in matcher.unused() if p.resolve() not in image_paths]
        return Listing(records, unlabeled, orphans)

    def _paint_polygons(self, shapes: Iterable[tuple[str, np.ndarray]], height: int, width: int
                        ) -> tuple[np.ndarray, list[Issue]]:
        canvas, issues = MaskCanvas(self.spec, height, width), []
        for label, points in shapes:
            index = self.index_of(label)
            if index is None:
                issues.append(unknown_class_issue(label, self.spec))
                continue
            if len(points) < 3:
                issues.append(Issue("bad_label", f"polygon of '{label}' has {len(points)} points", fatal=False))
                continue
            issue = outside_issue(points, height, width, label)
            if issue:
                issues.append(issue)
            canvas.fill_polygon(index, points)
        return canvas.result(), issues


class StemMatcher:
    """Finds the label file of an image by file stem; equal stems are told apart by parent folders."""

    def __init__(self, folder: Path, suffixes: set[str]):
        self.by_stem: dict[str, list[Path]] = defaultdict(list)
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in suffixes and path.is_file():
                self.by_stem[path.stem].append(path)
        self.used: set[Path] = set()

    def match(self, image: Path) -> Path | None:
        candidates = [c for c in self.by_stem.get(image.stem, []) if c.resolve() != image.resolve()
                      or image.suffix.lower() == ".json"]
        if not candidates:
            return None
        best = max(candidates, key=lambda c: _shared_parent_depth(c, image))
        self.used.add(best)
        return best

    def unused(self) -> list[Path]:
        return [p for paths in self.by_stem.values() for p in paths if p not in self.used]


def _shared_parent_depth(a: Path, b: Path) -> int:
    depth = 0
    for x, y in zip(reversed(a.parent.parts), reversed(b.parent.parts)):
        if x != y:
            break
        depth += 1
    return depth


# ---------------------------------------------------------------- coco

@register_reader("coco")
class CocoReader(Reader):
    """One COCO JSON (polygons or RLE). Multiclass: later annotations paint over earlier ones."""

    def __init__(self, spec: DatasetSpec):
        super().__init__(spec)
        from pycocotools.coco import COCO

        self.path = spec.resolve(spec.labels.path)
        data = _load_json(self.path)
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise UserError(f"a COCO file needs a list '{key}'", file=self.path, key=key)
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()

    def listing(self) -> Listing:
        by_name = {img["file_name"].replace("\\", "/"): img for img in self.coco.dataset["images"]}
        paths = list_images(self.spec)
        ids = [relative_id(self.spec, path) for path in paths]
        entries = [_match_by_suffix(image_id, by_name) for image_id in ids]
        matched = {entry["id"] for entry in entries if entry is not None}
        # then, for images nothing matched, a basename only one still-unmatched COCO entry has
        by_basename = _unique_basenames({name: img for name, img in by_name.items() if img["id"] not in matched})
        by_basename_only = 0
        for i, path in enumerate(paths):
            entry = by_basename.get(path.name)
            if entries[i] is None and entry is not None and entry["id"] not in matched:
                entries[i], by_basename_only = entry, by_basename_only + 1
                matched.add(entry["id"])
        records = [Record(image_id, path, self.group_of(image_id, entry), entry["id"])
                   for image_id, path, entry in zip(ids, paths, entries) if entry is not None]
        unlabeled = [image_id for image_id, entry in zip(ids, entries) if entry is None]
        orphans = [img["file_name"] for img in self.coco.dataset["images"] if img["id"] not in matched]
        issues = self._category_issues()
        if by_basename_only:
            issues.append(Issue("basename_match", f"{by_basename_only} images matched a COCO file_name by its "
                                                  f"basename only (paths in {self.path.name} are from another "
                                                  f"folder or machine)", fatal=False))
        return Listing(records, unlabeled, orphans, issues)

    def _category_issues(self) -> list[Issue]:
        used = {ann["category_id"] for ann in self.coco.dataset["annotations"]}
        return [Issue("unknown_class", f"category '{cat['name']}' (id {cat['id']}) in {self.path.name} "
                                       f"is not in classes")
                for cat in self.coco.dataset["categories"]
                if cat["id"] in used and self.index_of(cat["name"]) is None]

    def label_files(self, record: Record) -> list[Path]:
        return [self.path]

    def read_mask(self, record: Record, height: int, width: int) -> tuple[np.ndarray, list[Issue]]:
        entry = self.coco.imgs[record.label]
        issues = []
        if entry.get("height") is None and entry.get("width") is None:  # optional in some exports
            entry.update(height=height, width=width)
        if (entry.get("height"), entry.get("width")) != (height, width):
            issues.append(Issue("size_mismatch", f"COCO says {entry.get('width')}x{entry.get('height')}, "
                                                 f"the image is {width}x{height}"))
            return MaskCanvas(self.spec, height, width).result(), issues
        canvas = MaskCanvas(self.spec, height, width)
        for ann in self.coco.imgToAnns.get(record.label, []):
            name = self.coco.cats.get(ann["category_id"], {}).get("name", str(ann["category_id"]))
            index = self.index_of(name)
            if index is None:
                issues.append(unknown_class_issue(name, self.spec))
                continue
            if isinstance(ann.get("segmentation"), list):
                for polygon in ann["segmentation"]:
                    points = np.asarray(polygon, float).reshape(-1, 2)
                    issue = outside_issue(points, height, width, name) if len(points) else None
                    if issue:
                        issues.append(issue)
            canvas.fill_region(index, self.coco.annToMask(ann))
        return canvas.result(), issues


def _unique_basenames(by_name: dict[str, dict]) -> dict[str, dict]:
    """basename -> entry, for basenames that only one COCO file_name has (absolute or foreign paths)."""
    entries: dict[str, list[dict]] = defaultdict(list)
    for name, entry in by_name.items():
        entries[name.rsplit("/", 1)[-1]].append(entry)
    return {base: found[0] for base, found in entries.items() if len(found) == 1}


def _match_by_suffix(image_id: str, by_name: dict[str, dict]) -> dict | None:
    """COCO file_names are relative to some image folder: match the longest path suffix."""
    parts = image_id.split("/")
    for start in range(len(parts)):
        entry = by_name.get("/".join(parts[start:]))
        if entry is not None:
            return entry
    return None


# ---------------------------------------------------------------- polygon json

@register_reader("polygon_json")
class PolygonJsonReader(Reader):
    """One JSON per image, matched by stem: {"annotations": [{"label", "points"}]} or LabelMe `shapes`."""

    def listing(self) -> Listing:
        return self._listing_by_stem(self.spec.resolve(self.spec.labels.path), ".json")

    def read_mask(self, record: Record, height: int, width: int) -> tuple[np.ndarray, list[Issue]]:
        data = _load_json(record.label)
        return self._paint_polygons(self._shapes(data, record.label), height, width)

    @staticmethod
    def _shapes(data: dict, path: Path) -> list[tuple[str, np.ndarray]]:
        if "annotations" in data:
            items, kind_key = data["annotations"], "type"
        elif "shapes" in data:
            items, kind_key = data["shapes"], "shape_type"
        else:
            raise UserError("expected a list 'annotations' (or LabelMe 'shapes')", file=path,
                            fix='write {"annotations": [{"label": ..., "points": [[x, y], ...]}]}')
        shapes = []
        for i, item in enumerate(items):
            try:
                label, points = str(item["label"]), np.asarray(item["points"], float).reshape(-1, 2)
            except (KeyError, TypeError, ValueError):
                raise UserError(f"shape {i} needs 'label' and 'points' as [[x, y], ...]", file=path) from None
            kind = item.get(kind_key) or "polygon"
            if kind == "rectangle" and len(points) == 2:
                (x0, y0), (x1, y1) = points
                points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            elif kind == "circle" and len(points) == 2:
                center, edge = points
                radius = float(np.hypot(*(edge - center)))
                angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
                points = center + radius * np.stack([np.cos(angles), np.sin(angles)], 1)
            elif kind in ("line", "linestrip", "point", "points"):
                continue  # no area to paint
            shapes.append((label, points))
        return shapes


# ---------------------------------------------------------------- mask png

@register_reader("mask_png")
class MaskPngReader(Reader):
    """Index PNGs (multiclass: pixel = class index; binary: non-zero = foreground), or for multilabel
    one folder per class, named as in `classes`, of binary PNGs."""

    def listing(self) -> Listing:
        folder = self.spec.resolve(self.spec.labels.path)
        if self.spec.task == "multilabel":
            return self._listing_per_class(folder)
        return self._listing_by_stem(folder, ".png")

    def _listing_per_class(self, folder: Path) -> Listing:
        missing = [c for c in self.spec.classes if not (folder / c).is_dir()]
        if missing:
            raise UserError(f"multilabel mask_png needs one folder per class; missing {missing} in {folder}",
                            file=self.spec.source, key="labels.path", fix="create the folders or fix classes")
        matchers = [StemMatcher(folder / c, {".png"}) for c in self.spec.classes]
        records, unlabeled = [], []
        for path in list_images(self.spec):
            image_id = relative_id(self.spec, path)
            labels = tuple(m.match(path) for m in matchers)
            if all(label is None for label in labels):
                unlabeled.append(image_id)
            else:
                records.append(Record(image_id, path, self.group_of(image_id), labels))
        orphans = [relative_id(self.spec, p) for m in matchers for p in m.unused()]
        return Listing(records, unlabeled, orphans)

    def label_files(self, record: Record) -> list[Path]:
        if isinstance(record.label, tuple):
            return [p for p in record.label if p is not None]
        return [record.label]

    def read_mask(self, record: Record, height: int, width: int) -> tuple[np.ndarray, list[Issue]]:
        if self.spec.task == "multilabel":
            return self._read_per_class(record, height, width)
        values = read_index_png(record.label)
        if values.shape != (height, width):
            return (np.zeros((height, width), np.uint8),
                    [Issue("size_mismatch", f"mask {values.shape[::-1]} vs image {(width, height)}")])
        ignore = self.spec.effective_ignore_index
        ignored = values == ignore if ignore is not None else np.zeros(values.shape, bool)
        if self.spec.task == "binary":
            mask = (values != 0).astype(np.uint8)
            mask[ignored] = ignore if ignore is not None else 0
            return mask, []
        bad = np.unique(values[~ignored & (values >= self.spec.num_outputs)])
        issues = [Issue("unknown_class", f"pixel values {bad.tolist()} are not class indices "
                                         f"0..{self.spec.num_outputs - 1} nor ignore_index {ignore}")] if len(bad) else []
        return values.astype(np.uint8), issues

    def _read_per_class(self, record: Record, height: int, width: int) -> tuple[np.ndarray, list[Issue]]:
        mask, issues = np.zeros((self.spec.num_outputs, height, width), bool), []
        for index, path in enumerate(record.label):
            if path is None:
                continue
            values = read_index_png(path)
            if values.shape != (height, width):
                issues.append(Issue("size_mismatch", f"{path.name}: {values.shape[::-1]} vs image {(width, height)}"))
                continue
            mask[index] = values != 0
        return mask, issues


def read_index_png(path: Path) -> np.ndarray:
    """Label PNG -> HxW integer array; palette PNGs give their indices, not their colours."""
    try:
        with Image.open(path) as im:
            array = np.asarray(im)
    except Exception:
        raise UserError("cannot read this mask PNG", file=path, fix="replace or remove the file") from None
    if array.ndim == 3:
        if not (array[..., :3] == array[..., :1]).all():
            raise UserError("a mask PNG must hold class indices in one channel, this one has colours", file=path,
                            fix="save it as a grayscale or palette PNG")
        array = array[..., 0]
    return array
