"""Greedy selection on constructed OOF libraries whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from automl.ensemble import (Library, greedy_selection, score_weights, single_scores, tune_thresholds, vote_score)

N, H, W = 30, 8, 8


def binary_library(probabilities: list[np.ndarray], labels: np.ndarray) -> Library:
    arrays = [np.rint(p * 255).astype(np.uint8)[:, None] for p in probabilities]  # N x 1 x H x W
    return Library([f"m{i}" for i in range(len(arrays))], arrays, lambda rows: labels[rows],
                   [f"img{i}" for i in range(N)], "binary", 1, None)


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    return (rng.random((N, H, W)) > 0.5).astype(np.uint8)


def complementary(labels: np.ndarray) -> list[np.ndarray]:
    """Model i is confidently right on its third of the images and mildly wrong on the other two thirds."""
    models = []
    for i in range(3):
        right = np.where(labels == 1, 0.95, 0.05)
        wrong = np.where(labels == 1, 0.40, 0.60)
        mine = (np.arange(N) // (N // 3) == i)[:, None, None]
        models.append(np.where(mine, right, wrong))
    return models


def test_selection_picks_the_complementary_members_and_beats_each_alone(labels):
    decoy = np.where(labels == 1, 0.45, 0.55)  # wrong everywhere: never worth adding
    library = binary_library(complementary(labels) + [decoy], labels)
    singles = single_scores(library)
    assert singles[:3].max() < 0.5 and singles[3] == 0.0
    counts, history = greedy_selection(library, max_size=10)
    assert set(np.flatnonzero(counts)) == {0, 1, 2} and counts[3] == 0
    ensemble = score_weights(library, counts / counts.sum())
    assert ensemble == 1.0 > singles.max()
    assert [step["score"] for step in history] == sorted(step["score"] for step in history)


def test_selection_stops_when_nothing_improves(labels):
    perfect = np.where(labels == 1, 0.9, 0.1)
    library = binary_library([perfect, np.where(labels == 1, 0.4, 0.6)], labels)
    counts, history = greedy_selection(library, max_size=5)
    assert counts.tolist() == [1, 0] and len(history) == 1


def test_thresholds_fix_a_miscalibrated_model(labels):
    shy = np.where(labels == 1, 0.30, 0.10)  # right ranking, wrong scale: 0.5 finds nothing
    library = binary_library([shy], labels)
    weights = np.ones(1)
    assert score_weights(library, weights) == 0.0
    thresholds = tune_thresholds(library, weights)
    assert 0.1 <= thresholds[0] < 0.3
    assert score_weights(library, weights, thresholds) == 1.0


def test_hard_vote_breaks_ties_by_rank_and_70_percent_vote_needs_agreement(labels):
    yes, no = np.where(labels == 1, 0.9, 0.1), np.where(labels == 1, 0.1, 0.9)
    library = binary_library([yes, no], labels)
    assert vote_score(library, order=[0, 1], min_votes=None) == 1.0  # 1:1 tie -> the better-ranked model
    assert vote_score(library, order=[1, 0], min_votes=None) == 0.0
    three = binary_library([yes, yes, no], labels)
    assert vote_score(three, order=[0, 1, 2], min_votes=int(0.7 * 3)) == 1.0  # 2 of 3 agree: enough


def test_multiclass_soft_vote():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (N, H, W)).astype(np.uint8)
    one_hot = np.eye(3)[truth].transpose(0, 3, 1, 2)
    noisy = [np.clip(one_hot * 0.5 + rng.random(one_hot.shape) * 0.6, 0, 1) for _ in range(3)]
    arrays = [np.rint(p / p.sum(axis=1, keepdims=True) * 255).astype(np.uint8) for p in noisy]
    library = Library(["a", "b", "c"], arrays, lambda rows: truth[rows], [str(i) for i in range(N)], "multiclass",
                      3, 255)
    singles = single_scores(library)
    counts, _ = greedy_selection(library, max_size=6)
    assert score_weights(library, counts / counts.sum()) >= singles.max()
    assert score_weights(library, np.ones(3)) > singles.max()  # averaging independent noise helps
