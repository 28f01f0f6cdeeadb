"""`automl data audit`: the samples worth a second look before spending GPU days on them.

Flags unreadable images, images without labels and labels without images, empty masks, polygons outside
the image, unknown class names, per-class mask-area outliers (|z| above a threshold: a winning
hair-segmentation team dropped |z| > 1.2 as label noise) and mirrored class pairs (a left and a right lung,
which a horizontal flip turns into each other).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from automl import store
from automl.data import formats
from automl.data.dataset import SegmentationDataset
from automl.data.flips import decide_flips, mirrored_pairs
from automl.data.stats import LabelStats, label_stats
from automl.errors import UserError, require_positive

COLUMNS = ["id", "reason", "detail"]


def area_outliers(stats: LabelStats, class_names: list[str], z_threshold: float) -> list[dict]:
    """Per class, over the images that contain it: the z-score of the class's area fraction."""
    image_pixels = np.maximum(stats.sizes.prod(axis=1), 1)[:, None]
    fraction = stats.pixels / image_pixels
    flags = []
    for c, name in enumerate(class_names):
        present = np.flatnonzero(stats.presence[:, c])
        if len(present) < 3:
            continue
        values = fraction[present, c]
        std = values.std()
        if std == 0:
            continue
        z = (values - values.mean()) / std
        for i, score in zip(present[np.abs(z) > z_threshold], z[np.abs(z) > z_threshold]):
            flags.append({"id": stats.ids[i], "reason": "area_outlier",
                          "detail": f"'{name}' covers {fraction[i, c]:.2%} of the image, z={score:+.2f}"})
    return flags


def empty_masks(stats: LabelStats, task: str) -> list[dict]:
    foreground = stats.pixels[:, 1:] if task == "multiclass" else stats.pixels
    readable = stats.sizes.prod(axis=1) > 0
    return [{"id": stats.ids[i], "reason": "empty_mask", "detail": "no foreground pixel"}
            for i in np.flatnonzero((foreground.sum(axis=1) == 0) & readable)]


def undecodable_images(dataset: SegmentationDataset, workers: int = 4) -> list[dict]:
    """Images whose header reads but whose pixels do not decode (truncated files)."""
    def check(index: int) -> dict | None:
        try:
            formats.read_image(dataset.records[index].image)
        except UserError as e:
            return {"id": dataset.records[index].id, "reason": "unreadable_image", "detail": e.message}
        return None

    with ThreadPoolExecutor(workers) as pool:
        return [flag for flag in pool.map(check, range(len(dataset))) if flag]


def audit_dataset(dataset_yaml: str | Path, z: float = 3.0, csv: str | Path | None = None,
                  console: Console | None = None) -> pd.DataFrame:
    require_positive("--z", z, fix="e.g. --z 3 (or 1.2 to flag more)")
    dataset = SegmentationDataset.from_yaml(dataset_yaml, strict=False)
    spec = dataset.spec
    stats = label_stats(dataset)
    flags = [{"id": "(dataset)", "reason": issue.kind, "detail": issue.detail} for issue in dataset.listing.issues]
    flags += [{"id": i, "reason": "no_label", "detail": "no label matches this image"}
              for i in dataset.listing.unlabeled_images]
    flags += [{"id": i, "reason": "no_image", "detail": "no image matches this label"}
              for i in dataset.listing.orphan_labels]
    for image_id, issues in zip(stats.ids, stats.issues):
        flags += [{"id": image_id, "reason": issue.kind, "detail": issue.detail} for issue in issues]
    unreadable = {f["id"] for f in flags if f["reason"] == "unreadable_image"}
    flags += [f for f in undecodable_images(dataset) if f["id"] not in unreadable]
    flags += empty_masks(stats, spec.task)
    flags += area_outliers(stats, spec.class_names, z)
    pairs = mirrored_pairs(stats, spec.class_names, spec.task)
    flags += [{"id": "(dataset)", "reason": "mirrored_pair", "detail": pair.detail()} for pair in pairs]
    table = pd.DataFrame(flags, columns=COLUMNS)
    csv_path = Path(csv) if csv else Path(spec.source).with_name("audit.csv")
    with store.atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    console = console or Console()
    _print(table, len(dataset), csv_path, console)
    decision = decide_flips(spec, stats)
    if decision.note:
        console.print(decision.note, soft_wrap=True)
    return table


def _print(table: pd.DataFrame, n_images: int, csv_path: Path, console: Console) -> None:
    if table.empty:
        console.print(f"audit: {n_images} labelled images, nothing flagged; wrote {csv_path}")
        return
    counts = table["reason"].value_counts()
    console.print(f"audit: {n_images} labelled images, {table['id'].nunique()} flagged: "
                  + ", ".join(f"{reason} {count}" for reason, count in counts.items()))
    view = Table("id", "reason", "detail", title=f"flagged samples (first 20 of {len(table)})")
    for row in table.head(20).itertuples():
        view.add_row(row.id, row.reason, row.detail)
    console.print(view)
    console.print(f"all flags: {csv_path}")
