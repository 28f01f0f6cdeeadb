"""Group-aware subsamples and K folds. One group never spans two folds; the same seed gives the same split.

The folds come from scikit-learn's StratifiedGroupKFold (GroupKFold when nothing stratifies); only the
stratum of each sample is decided here: multiclass by its dominant class, multilabel by its rarest
present class, binary by whether it has foreground.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from automl import store
from automl.errors import UserError

NO_CLASS = -1


def strata(pixels: np.ndarray, task: str) -> np.ndarray:
    """One stratum per sample from its N x C class pixel counts."""
    present = pixels > 0
    if task == "binary":
        return present[:, 0].astype(int)
    if task == "multiclass":
        foreground = pixels[:, 1:]  # index 0 is the background
        return np.where(foreground.sum(axis=1) > 0, foreground.argmax(axis=1) + 1, 0)
    frequency = present.sum(axis=0)
    rarity = np.where(present, frequency[None, :], np.iinfo(np.int64).max)
    return np.where(present.any(axis=1), rarity.argmin(axis=1), NO_CLASS)


def labelled_strata(pixels: np.ndarray, task: str, training_only: np.ndarray) -> np.ndarray:
    """Strata of the labelled rows computed among themselves (multilabel strata depend on how often each
    class occurs, so pseudo-labelled rows must not shift them); training-only rows get their own."""
    out = np.full(len(pixels), NO_CLASS - 1)
    out[~training_only] = strata(pixels[~training_only], task)
    return out


def group_subsample(groups: list[str], sample_strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted sample indices of a seeded fraction of the groups, taken per stratum so rare classes stay.

    A group's stratum is the rarest stratum among its samples; each stratum keeps at least one group.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"subsample fraction must be in (0, 1], got {fraction}")
    groups = np.asarray(groups)
    if fraction == 1:
        return np.arange(len(groups))
    unique, inverse = np.unique(groups, return_inverse=True)
    stratum_count = {s: c for s, c in zip(*np.unique(sample_strata, return_counts=True))}
    group_stratum = np.empty(len(unique), dtype=np.asarray(sample_strata).dtype)
    for g in range(len(unique)):
        members = np.asarray(sample_strata)[inverse == g]
        group_stratum[g] = min(members, key=lambda s: (stratum_count[s], s))
    rng = np.random.default_rng(seed)
    chosen = []
    for stratum in np.unique(group_stratum):
        candidates = np.flatnonzero(group_stratum == stratum)
        take = max(1, int(round(fraction * len(candidates))))
        chosen.extend(rng.choice(candidates, size=take, replace=False))
    return np.flatnonzero(np.isin(inverse, chosen))


def kfold(groups: list[str], sample_strata: np.ndarray | None, n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) of every sample: the fold in which it is validated."""
    n_groups = len(set(groups))
    if n_folds < 2:
        raise UserError(f"need at least 2 folds, got {n_folds}", key="folds", fix="pass --folds 2 or more")
    if n_groups < n_folds:
        raise UserError(f"{n_groups} groups cannot fill {n_folds} folds", key="folds",
                        fix=f"use --folds {max(2, n_groups)} or fewer, or check the `groups` regex")
    x = np.zeros((len(groups), 1))
    fold_of = np.full(len(groups), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members"
        if stratifiable(sample_strata, n_folds):
            splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
            splits = splitter.split(x, sample_strata, groups)
        else:
            splits = GroupKFold(n_folds, shuffle=True, random_state=seed).split(x, groups=groups)
        for fold, (_, validation) in enumerate(splits):
            fold_of[validation] = fold
    return fold_of


def stratifiable(sample_strata: np.ndarray | None, n_folds: int) -> bool:
    """StratifiedGroupKFold needs two strata and one of them with at least n_folds samples."""
    if sample_strata is None:
        return False
    counts = np.unique(sample_strata, return_counts=True)[1]
    return len(counts) > 1 and counts.max() >= n_folds


def holdout(groups: list[str], sample_strata: np.ndarray | None, fraction: float, seed: int,
            training_only: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of a held-out validation set of about `fraction` of the groups; `training_only` rows
    (pseudo-labelled) are never in it and do not move the split of the others."""
    keep = np.ones(len(groups), bool) if training_only is None else ~training_only
    rows = np.flatnonzero(keep)
    kept_groups = [groups[i] for i in rows]
    n_folds = min(max(2, int(round(1 / fraction))), len(set(kept_groups)))
    is_val = np.zeros(len(groups), bool)
    is_val[rows] = kfold(kept_groups, None if sample_strata is None else sample_strata[rows], n_folds, seed) == 0
    return is_val


TRAINING_ONLY = -1


def fold_fingerprint(validated: "Iterable[tuple[str, int]]") -> str:
    """(image id, fold that validates it) pairs -> a short hash of the assignment."""
    return hashlib.sha256(json.dumps(sorted(validated)).encode()).hexdigest()[:16]


@dataclass
class Splits:
    """Saved with the study so every later command validates on exactly the same images."""

    ids: list[str]
    groups: list[str]
    fold: list[int]  # fold in which each id is validated; -1: training only (pseudo-labelled), never validated
    seed: int
    method: str

    @property
    def n_folds(self) -> int:
        return max(self.fold) + 1

    def validation(self, k: int) -> list[str]:
        return [i for i, f in zip(self.ids, self.fold) if f == k]

    def training(self, k: int) -> list[str]:
        return [i for i, f in zip(self.ids, self.fold) if f != k]

    @property
    def validated_ids(self) -> list[str]:
        """The ids some fold validates (the rows of an OOF file), in order."""
        return [i for i, f in zip(self.ids, self.fold) if f >= 0]

    def with_training_only(self, ids: list[str]) -> "Splits":
        """These splits plus `ids` in every fold's training set and in no validation set."""
        return Splits(self.ids + list(ids), self.groups + list(ids), self.fold + [TRAINING_ONLY] * len(ids),
                      self.seed, self.method)

    @property
    def fingerprint(self) -> str:
        """Which image each fold validates, as a short hash: equal fingerprints, equal folds."""
        return fold_fingerprint((i, f) for i, f in zip(self.ids, self.fold) if f >= 0)

    def save(self, path: str | Path) -> None:
        store.write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path, ids: list[str] | None = None) -> "Splits":
        splits = cls(**store.read_json(path))
        if ids is not None and set(ids) != set(splits.ids):
            changed = len(set(ids) ^ set(splits.ids))
            raise UserError(f"the dataset changed since these splits were made ({changed} images differ)",
                            file=path, fix="use a new study (its folds are made on the dataset as it is now)")
        return splits


def make_kfold_splits(ids: list[str], groups: list[str], sample_strata: np.ndarray | None, n_folds: int,
                      seed: int) -> Splits:
    fold = kfold(groups, sample_strata, n_folds, seed)
    method = "StratifiedGroupKFold" if stratifiable(sample_strata, n_folds) else "GroupKFold"
    return Splits(list(ids), list(groups), [int(f) for f in fold], seed, method)


def saved_splits_for(path: str | Path, dataset) -> Splits:
    """The study's saved folds (made on its labelled images; a dataset whose labelled images changed is
    refused) with the dataset's pseudo-labelled images added as training only."""
    splits = Splits.load(path, dataset.labelled_ids)
    extra = [record.id for record in dataset.records if record.training_only]
    return splits.with_training_only(extra) if extra else splits
