"""Mirrored class pairs (a left and a right lung): what a horizontal flip turns into each other.

Two classes form a mirrored pair when they appear together in nearly every image that has either, sit on
opposite halves of the image at mirrored positions, and have similar areas. Objects that merely stand
apart in a scene (sonar targets in a tank) rarely pass the co-occurrence, position and area tests at once. A flip of such a dataset must swap the pair's
labels (or not happen at all); `flips` in dataset.yaml says which, and when it is absent the pairs found
here are swapped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from automl.config import BACKGROUND, DatasetSpec, FlipPolicy
from automl.data.stats import LabelStats

MIN_IMAGES = 5  # images holding both classes before a pair is believed
TOGETHER = 0.9  # share of the images with either class that hold both
OPPOSITE = 0.9  # share of those in which the two sit on opposite halves, always the same way round
AREA_RATIO = 0.5  # median of smaller / larger area in those images
SYMMETRY = 0.15  # median |x_a + x_b - 1|: the two centres mirror each other about the middle column


@dataclass(frozen=True)
class MirroredPair:
    left: str  # the class on the image's left half
    right: str
    images: int  # images holding both
    together: float
    opposite: float
    area_ratio: float

    def detail(self) -> str:
        return (f"'{self.left}' and '{self.right}' look mirrored: together in {self.together:.0%} of the images "
                f"with either ({self.images}), on opposite halves in {self.opposite:.0%}, area ratio "
                f"{self.area_ratio:.2f}")


def mirrored_pairs(stats: LabelStats, class_names: list[str], task: str) -> list[MirroredPair]:
    """Candidate pairs by the three tests; a class joins at most one pair (the most opposite one)."""
    if task == "binary" or stats.centre_x is None:
        return []
    present, centre, area = stats.presence, stats.centre_x, stats.area_fraction
    candidates = [c for c, name in enumerate(class_names) if not (task == "multiclass" and name == BACKGROUND)]
    found = []
    for i, a in enumerate(candidates):
        for b in candidates[i + 1:]:
            pair = _test_pair(present[:, a], present[:, b], centre[:, a], centre[:, b], area[:, a], area[:, b])
            if pair is not None:
                left_first = pair[0]
                names = (class_names[a], class_names[b]) if left_first else (class_names[b], class_names[a])
                found.append(MirroredPair(*names, *pair[1:]))
    chosen, used = [], set()
    for pair in sorted(found, key=lambda p: (-p.opposite, -p.together)):
        if pair.left not in used and pair.right not in used:
            chosen.append(pair)
            used |= {pair.left, pair.right}
    return chosen


def _test_pair(has_a, has_b, x_a, x_b, area_a, area_b):
    both = has_a & has_b
    n_both = int(both.sum())
    if n_both < MIN_IMAGES:
        return None
    together = n_both / int((has_a | has_b).sum())
    a_left = float(np.mean((x_a[both] < 0.5) & (x_b[both] > 0.5)))
    b_left = float(np.mean((x_b[both] < 0.5) & (x_a[both] > 0.5)))
    opposite = max(a_left, b_left)
    small, large = np.minimum(area_a[both], area_b[both]), np.maximum(area_a[both], area_b[both])
    ratio = float(np.median(small / np.maximum(large, 1e-12)))
    asymmetry = float(np.median(np.abs(x_a[both] + x_b[both] - 1)))
    if together < TOGETHER or opposite < OPPOSITE or ratio < AREA_RATIO or asymmetry > SYMMETRY:
        return None
    return a_left >= b_left, n_both, together, opposite, ratio


@dataclass(frozen=True)
class FlipDecision:
    policy: FlipPolicy
    source: str  # dataset.yaml | audit | default
    note: str  # one line for the user: what was decided and how to override it

    def to_dict(self) -> dict:
        return {**self.policy.model_dump(mode="json"), "source": self.source, "note": self.note}


def decide_flips(spec: DatasetSpec, stats: LabelStats) -> FlipDecision:
    """The dataset.yaml's `flips` if it has one; else the mirrored pairs found here, swapped when flipping."""
    if spec.flips is not None:
        return FlipDecision(spec.flips, "dataset.yaml", f"flips from {spec.source}: {spec.flips.describe()}")
    pairs = mirrored_pairs(stats, spec.class_names, spec.task)
    if not pairs:
        return FlipDecision(FlipPolicy(), "default", "")
    policy = FlipPolicy(pairs=[(p.left, p.right) for p in pairs])
    listed = "; ".join(p.detail() for p in pairs)
    note = (f"flips: {listed}: horizontal flips (augmentation and TTA) will swap them. To override, add "
            f"`flips: {{horizontal: false}}` (no flips) or `flips: {{pairs: []}}` (plain flips) to {spec.source}")
    return FlipDecision(policy, "audit", note)
