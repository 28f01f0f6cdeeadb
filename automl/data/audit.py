"""`automl data audit`: the samples worth a second look before spending GPU days on them.

Flags unreadable images, images without labels and labels without images, empty masks, polygons outside
the image, unknown class names, per-class mask-area outliers (|z| above a threshold: a winning
hair-segmentation team dropped |z| > 1.2 as label noise) and mirrored class pairs (a left and a right lung,
which a horizontal flip turns into each other).
With `--drop RULE` it also writes an exclusion list (`area_z>1.2`: images where a class covers an unusual
share of the image; `oof<0.2`: images the study's ensemble scores poorly out of fold, from
ensemble_per_image.csv) that search and promote leave out once the dataset.yaml names it (`exclude:`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import operator
import os
import re
from dataclasses import dataclass

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


def area_z_scores(stats: LabelStats, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(images x classes z-scores of each class's area fraction over the images that contain it, NaN where
    the class is absent or too rare to score; the area fractions). A multiclass background is never scored:
    it is whatever the objects leave, so an image with small objects would read as a background outlier."""
    fraction = stats.pixels / np.maximum(stats.sizes.prod(axis=1), 1)[:, None]
    z = np.full(fraction.shape, np.nan)
    for c in range(1 if task == "multiclass" else 0, fraction.shape[1]):
        present = np.flatnonzero(stats.presence[:, c])
        values = fraction[present, c]
        if len(present) >= 3 and values.std() > 0:
            z[present, c] = (values - values.mean()) / values.std()
    return z, fraction


def area_outliers(stats: LabelStats, class_names: list[str], z_threshold: float, task: str) -> list[dict]:
    """Per class, over the images that contain it: the z-score of the class's area fraction."""
    z, fraction = area_z_scores(stats, task)
    flags = []
    for c, name in enumerate(class_names):
        for i in np.flatnonzero(np.abs(np.nan_to_num(z[:, c])) > z_threshold):
            flags.append({"id": stats.ids[i], "reason": "area_outlier",
                          "detail": f"'{name}' covers {fraction[i, c]:.2%} of the image, z={z[i, c]:+.2f}"})
    return flags


# ---------------------------------------------------------------- --drop: an exclusion list

OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
DROP_MEASURES = {"area_z": "z-score of a class's area fraction (any class of the image)",
                 "oof": "the ensemble's out-of-fold score of the image (ensemble_per_image.csv)"}


@dataclass(frozen=True)
class DropRule:
    measure: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "DropRule":
        match = re.fullmatch(r"\s*([a-z_]+)\s*(>=|<=|>|<)\s*(-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e-?[0-9]+)?)\s*", text or "")
        if not match:
            raise UserError(f"cannot read the drop rule {text!r}", key="--drop",
                            fix="write MEASURE OPERATOR NUMBER, e.g. --drop 'area_z>1.2' or --drop 'oof<0.2'")
        if match.group(1) not in DROP_MEASURES:
            from trainables.registry import unknown_name_message

            raise UserError(unknown_name_message("drop measure", match.group(1), DROP_MEASURES), key="--drop",
                            fix="; ".join(f"{name}: {meaning}" for name, meaning in DROP_MEASURES.items()))
        return cls(match.group(1), match.group(2), float(match.group(3)))

    def __str__(self) -> str:
        return f"{self.measure}{self.op}{self.value:g}"

    def selects(self, values: np.ndarray) -> np.ndarray:
        return OPERATORS[self.op](values, self.value)


def dropped_by_area(rule: DropRule, stats: LabelStats, task: str) -> list[str]:
    z, _ = area_z_scores(stats, task)
    return [stats.ids[i] for i in np.flatnonzero(rule.selects(z).any(axis=1))]  # NaN (class absent) never selects


def require_oof_scores(per_image_csv: str | Path | None) -> Path:
    """The study's ensemble_per_image.csv, or one line saying how to make it."""
    if per_image_csv is None or not Path(per_image_csv).is_file():
        raise UserError(f"no per-image OOF scores ({per_image_csv or 'no --study given'}): the oof rule reads "
                        f"the ensemble's ensemble_per_image.csv", key="--drop",
                        fix="run `automl ensemble STUDY` first and pass --study STUDY [--runs-dir DIR]")
    return Path(per_image_csv)


def dropped_by_oof(rule: DropRule, per_image_csv: Path, known_ids: set[str]) -> list[str]:
    scores = pd.read_csv(per_image_csv, dtype={"id": str})
    scores = scores[scores["id"].isin(known_ids)]
    return scores.loc[rule.selects(scores["score"].to_numpy()), "id"].tolist()


def write_exclusion_list(path: Path, rule: DropRule, dropped: list[str], already: list[str]) -> list[str]:
    """The ids to leave out: those the rule drops plus those the dataset already excludes (so pointing
    `exclude:` at the new file loses none), one per line, under a comment that says where they came from."""
    ids = sorted(set(dropped) | set(already))
    header = f"# automl data audit --drop '{rule}': {len(dropped)} dropped"
    header += f", {len(set(already) - set(dropped))} kept from the previous exclusion list\n" if already else "\n"
    store.write_text(path, header + "".join(f"{i}\n" for i in ids))
    return ids


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
                  console: Console | None = None, drop: str | None = None, exclude_out: str | Path | None = None,
                  per_image_csv: str | Path | None = None) -> pd.DataFrame:
    require_positive("--z", z, fix="e.g. --z 3 (or 1.2 to flag more)")
    rule = DropRule.parse(drop) if drop else None
    if rule and rule.measure == "oof":
        per_image_csv = require_oof_scores(per_image_csv)  # before the audit's work, not after it
    dataset = SegmentationDataset.from_yaml(dataset_yaml, strict=False, pseudo=False)  # labels people wrote
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
    flags += area_outliers(stats, spec.class_names, z, spec.task)
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
    if rule:
        dropped = (dropped_by_area(rule, stats, spec.task) if rule.measure == "area_z" else
                   dropped_by_oof(rule, per_image_csv, set(stats.ids)))
        out = Path(exclude_out) if exclude_out else Path(spec.source).with_name("exclude.txt")
        ids = write_exclusion_list(out, rule, dropped, dataset.excluded)
        named = os.path.relpath(out.resolve(), spec.root.resolve())  # `exclude:` is read relative to root
        console.print(f"--drop '{rule}': {len(dropped)} of {len(dataset)} images dropped; wrote {len(ids)} ids to "
                      f"{out}. To leave them out of search and promote, set `exclude: {named}` in {spec.source}",
                      soft_wrap=True)
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
