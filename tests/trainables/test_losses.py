"""Each loss term against a hand computation on a 2x2 example; hybrid weights combine linearly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.losses import TERMS, HybridLoss

# binary 2x2: logits and labels, one image
LOGITS = [[2.0, -1.0], [0.5, -3.0]]
LABELS = [[1.0, 0.0], [0.0, 1.0]]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def binary_pairs():
    return [(sigmoid(z), y) for z, y in zip(sum(LOGITS, []), sum(LABELS, []))]


def hand_bce() -> float:
    return sum(-(y * math.log(p) + (1 - y) * math.log(1 - p)) for p, y in binary_pairs()) / 4


def hand_dice() -> float:
    pairs = binary_pairs()
    intersection = sum(p * y for p, y in pairs)
    return 1 - 2 * intersection / (sum(p for p, _ in pairs) + sum(y for _, y in pairs))


def hand_jaccard() -> float:
    pairs = binary_pairs()
    intersection = sum(p * y for p, y in pairs)
    return 1 - intersection / (sum(p for p, _ in pairs) + sum(y for _, y in pairs) - intersection)


def hand_focal(gamma: float = 2.0) -> float:
    total = 0.0
    for p, y in binary_pairs():
        pt = p if y == 1 else 1 - p
        total += -((1 - pt) ** gamma) * math.log(pt)
    return total / 4


def hand_tversky(alpha: float = 0.3, beta: float = 0.7) -> float:
    pairs = binary_pairs()
    tp = sum(p * y for p, y in pairs)
    fp = sum(p * (1 - y) for p, y in pairs)
    fn = sum((1 - p) * y for p, y in pairs)
    return 1 - tp / (tp + alpha * fp + beta * fn)


def hand_lovasz() -> float:
    """Lovasz hinge (Berman et al. 2018): sorted hinge errors dotted with the Jaccard gradient."""
    items = sorted(((1 - z * (2 * y - 1)), y) for z, y in zip(sum(LOGITS, []), sum(LABELS, [])))[::-1]
    positives = sum(y for _, y in items)
    jaccards, seen_pos, seen_neg = [], 0.0, 0.0
    for _, y in items:
        seen_pos += y
        seen_neg += 1 - y
        jaccards.append(1 - (positives - seen_pos) / (positives + seen_neg))
    grad = [jaccards[0]] + [b - a for a, b in zip(jaccards, jaccards[1:])]
    return sum(max(e, 0.0) * g for (e, _), g in zip(items, grad))


HAND = {"bce": hand_bce, "ce": hand_bce, "dice": hand_dice, "jaccard": hand_jaccard, "focal": hand_focal,
        "tversky": hand_tversky, "lovasz": hand_lovasz}


@pytest.mark.parametrize("term", sorted(HAND))
def test_binary_term_matches_hand_computation(term):
    logits = torch.tensor(LOGITS).view(1, 1, 2, 2)
    target = torch.tensor(LABELS).view(1, 1, 2, 2)
    value = TERMS.get(term)("binary", None)(logits, target)
    assert float(value) == pytest.approx(HAND[term](), rel=1e-5)


def test_multiclass_ce_and_dice_by_hand_with_ignore_index():
    logits = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]])[None]
    target = torch.tensor([[[0, 1], [255, 2]]])
    probs = torch.softmax(logits, dim=1)[0]  # 3 x 2 x 2
    pixels = [(0, 0, 0), (0, 1, 1), (1, 1, 2)]  # (row, col, class) of the pixels not ignored
    ce = -sum(math.log(float(probs[c, r, k])) for r, k, c in pixels) / 3
    assert float(TERMS.get("ce")("multiclass", 255)(logits, target)) == pytest.approx(ce, rel=1e-6)
    dice_per_class = []
    for c in range(3):
        p = [float(probs[c, r, k]) for r, k, _ in pixels]
        y = [1.0 if cls == c else 0.0 for _, _, cls in pixels]
        dice_per_class.append(1 - 2 * sum(a * b for a, b in zip(p, y)) / (sum(p) + sum(y)))
    assert float(TERMS.get("dice")("multiclass", 255)(logits, target)) == pytest.approx(np.mean(dice_per_class),
                                                                                        rel=1e-5)
    # multiclass bce: one-hot targets, ignored pixel left out
    sig = torch.sigmoid(logits)[0]
    bce = -sum(math.log(float(sig[c, r, k])) if c == cls else math.log(1 - float(sig[c, r, k]))
               for r, k, cls in pixels for c in range(3)) / 9
    assert float(TERMS.get("bce")("multiclass", 255)(logits, target)) == pytest.approx(bce, rel=1e-6)


@pytest.mark.parametrize("task", ["multiclass", "multilabel", "binary"])
@pytest.mark.parametrize("term", TERMS.names())
def test_every_term_has_finite_gradients(task, term):
    torch.manual_seed(0)
    channels = {"multiclass": 3, "multilabel": 3, "binary": 1}[task]
    logits = torch.randn(2, channels, 8, 8, requires_grad=True)
    if task == "multiclass":
        target = torch.randint(0, 3, (2, 8, 8))
        target[0, 0, :4] = 255
    else:
        target = (torch.rand(2, channels, 8, 8) > 0.5).float()
    loss = TERMS.get(term)(task, 255 if task == "multiclass" else None)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_hybrid_weights_combine_linearly_and_skip_zero_terms():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    ce = TERMS.get("ce")("multiclass", 255)(logits, target)
    dice = TERMS.get("dice")("multiclass", 255)(logits, target)
    hybrid = HybridLoss({"ce": 0.3, "dice": 0.7, "focal": 0.0}, "multiclass", 255)
    assert set(hybrid.terms) == {"ce", "dice"}
    assert float(hybrid(logits, target)) == pytest.approx(float(0.3 * ce + 0.7 * dice), rel=1e-6)
    doubled = HybridLoss({"ce": 0.6, "dice": 1.4}, "multiclass", 255)
    assert float(doubled(logits, target)) == pytest.approx(2 * float(hybrid(logits, target)), rel=1e-6)


@pytest.mark.parametrize("terms, message", [({"ce": 0.0, "dice": 0.0}, "at least one loss weight"),
                                            ({"dcie": 1.0}, "did you mean 'dice'"),
                                            ({"ce": -1.0}, "must be >= 0")])
def test_bad_weights_are_rejected(terms, message):
    with pytest.raises(ValueError, match=message):
        HybridLoss(terms, "binary")
