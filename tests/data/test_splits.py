"""Group splits: no group in two folds, same seed -> same split, subsamples take whole groups."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from automl.data.splits import Splits, group_subsample, holdout, kfold, make_kfold_splits, strata
from automl.errors import UserError


@st.composite
def layouts(draw):
    n_groups = draw(st.integers(3, 25))
    sizes = draw(st.lists(st.integers(1, 4), min_size=n_groups, max_size=n_groups))
    groups = [f"g{g}" for g, size in enumerate(sizes) for _ in range(size)]
    order = draw(st.permutations(range(len(groups))))
    groups = [groups[i] for i in order]  # samples of a group need not be adjacent
    labels = np.array(draw(st.lists(st.integers(0, 3), min_size=len(groups), max_size=len(groups))))
    return groups, labels


@settings(max_examples=60, deadline=None)
@given(layouts(), st.integers(2, 5), st.integers(0, 10_000))
def test_kfold_never_splits_a_group_and_is_seeded(layout, n_folds, seed):
    groups, labels = layout
    n_folds = min(n_folds, len(set(groups)))
    fold = kfold(groups, labels, n_folds, seed)
    assert fold.min() == 0 and fold.max() < n_folds and len(fold) == len(groups)
    for g in set(groups):
        assert len({fold[i] for i, x in enumerate(groups) if x == g}) == 1
    np.testing.assert_array_equal(fold, kfold(groups, labels, n_folds, seed))


@settings(max_examples=60, deadline=None)
@given(layouts(), st.floats(0.1, 1.0), st.integers(0, 10_000))
def test_subsample_takes_whole_groups_and_every_stratum(layout, fraction, seed):
    groups, labels = layout
    chosen = group_subsample(groups, labels, fraction, seed)
    np.testing.assert_array_equal(chosen, group_subsample(groups, labels, fraction, seed))
    chosen_groups = {groups[i] for i in chosen}
    assert set(chosen) == {i for i, g in enumerate(groups) if g in chosen_groups}
    # a group's stratum is the rarest among its samples; every stratum keeps at least one group
    counts = {v: c for v, c in zip(*np.unique(labels, return_counts=True))}
    group_stratum = {g: min((labels[i] for i, x in enumerate(groups) if x == g), key=lambda v: (counts[v], v))
                     for g in set(groups)}
    assert {group_stratum[g] for g in chosen_groups} == set(group_stratum.values())


def test_subsample_fraction_is_roughly_kept():
    groups = [f"g{i // 2}" for i in range(400)]
    labels = np.arange(400) // 2 % 4
    chosen = group_subsample(groups, labels, 0.25, seed=3)
    assert abs(len(chosen) - 100) <= 4
    assert set(labels[chosen]) == {0, 1, 2, 3}
    assert not np.array_equal(chosen, group_subsample(groups, labels, 0.25, seed=4))


def test_strata_per_task():
    pixels = np.array([[90, 5, 0], [50, 1, 30], [100, 0, 0]])
    np.testing.assert_array_equal(strata(pixels, "multiclass"), [1, 2, 0])
    # multilabel: the rarest class present; class 2 is in one image, class 1 in two
    np.testing.assert_array_equal(strata(pixels[:, 1:], "multilabel"), [0, 1, -1])
    np.testing.assert_array_equal(strata(pixels[:, :1] * [[0], [1], [1]], "binary"), [0, 1, 1])


def test_holdout_is_a_group_split_of_about_the_fraction():
    groups = [f"g{i // 2}" for i in range(100)]
    mask = holdout(groups, None, 0.2, seed=0)
    assert 16 <= mask.sum() <= 24
    assert not {groups[i] for i in np.flatnonzero(mask)} & {groups[i] for i in np.flatnonzero(~mask)}


def test_too_few_groups_for_the_folds():
    with pytest.raises(UserError, match="2 groups cannot fill 3 folds"):
        kfold(["a", "a", "b"], None, 3, seed=0)


def test_splits_round_trip_and_refuse_a_changed_dataset(tmp_path):
    ids = [f"im{i}.png" for i in range(12)]
    groups = [f"g{i // 3}" for i in range(12)]
    splits = make_kfold_splits(ids, groups, np.arange(12) % 2, 3, seed=1)
    assert splits.method == "StratifiedGroupKFold" and splits.n_folds == 3
    splits.save(tmp_path / "splits.json")
    again = Splits.load(tmp_path / "splits.json", ids)
    assert again == splits
    assert sorted(again.validation(0) + again.training(0)) == sorted(ids)
    with pytest.raises(UserError, match="dataset changed"):
        Splits.load(tmp_path / "splits.json", ids[:-1])
