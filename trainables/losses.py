"""Hybrid loss = sum of weight * term over registered terms, with the activation of the task.

multiclass: softmax over classes, targets are class indices (ignore_index left out);
multilabel: a sigmoid per channel, targets CxHxW; binary: one sigmoid channel, targets 1xHxW.
`ce` is the task's cross-entropy (softmax CE, or BCE for sigmoid tasks); `bce` is BCE on each channel
(one-hot targets in multiclass).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainables.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TERMS: Registry[Callable[[str, int | None], LossFn]] = Registry("loss term")
SMP_MODE = {"multiclass": "multiclass", "multilabel": "multilabel", "binary": "binary"}


def _valid_mask(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    return torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index


def _bce(task: str, ignore_index: int | None) -> LossFn:
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = _valid_mask(target, ignore_index)
        if task == "multiclass":
            one_hot = F.one_hot(torch.where(valid, target, 0).long(), logits.shape[1]).permute(0, 3, 1, 2)
            target, valid = one_hot.to(logits.dtype), valid.unsqueeze(1).expand_as(logits)
        else:
            target = torch.where(valid, target, 0).to(logits.dtype)
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (per_pixel * valid).sum() / valid.sum().clamp_min(1)
    return loss


@TERMS.register("ce")
def cross_entropy(task: str, ignore_index: int | None) -> LossFn:
    if task != "multiclass":
        return _bce(task, ignore_index)
    index = -100 if ignore_index is None else ignore_index
    return lambda logits, target: F.cross_entropy(logits, target.long(), ignore_index=index)


TERMS.register("bce")(_bce)


def _smp(loss_class: str, **options) -> Callable[[str, int | None], LossFn]:
    def make(task: str, ignore_index: int | None) -> LossFn:
        import segmentation_models_pytorch as smp

        mode = SMP_MODE[task]
        if loss_class == "FocalLoss" and task == "multilabel":
            # smp's multilabel focal indexes each channel with an N x C x H x W ignore mask and fails; over
            # channels of equal size its binary mode (one mean over every pixel of every channel) is the
            # same number, and it leaves ignored pixels out
            mode = "binary"
        module = getattr(smp.losses, loss_class)(mode=mode, ignore_index=ignore_index, **options)
        if task == "multiclass":
            return lambda logits, target: module(logits, target.long())
        return module
    return make


TERMS.register("dice")(_smp("DiceLoss", from_logits=True))
TERMS.register("jaccard")(_smp("JaccardLoss", from_logits=True))
TERMS.register("focal")(_smp("FocalLoss"))
TERMS.register("lovasz")(_smp("LovaszLoss"))
TERMS.register("tversky")(_smp("TverskyLoss", alpha=0.3, beta=0.7))


def check_terms(terms: dict[str, float]) -> dict[str, float]:
    for name, weight in terms.items():
        TERMS.check(name)
        if weight < 0:
            raise ValueError(f"loss weight of '{name}' must be >= 0, got {weight}")
    if not any(weight > 0 for weight in terms.values()):
        raise ValueError(f"at least one loss weight must be > 0, got {terms}")
    return terms


class HybridLoss(nn.Module):
    """sum(weight * term(logits, target)); zero-weight terms are not computed."""

    def __init__(self, terms: dict[str, float], task: str, ignore_index: int | None = None):
        super().__init__()
        check_terms(terms)
        self.weights = {name: float(w) for name, w in terms.items() if w > 0}
        self.terms = {name: TERMS.get(name)(task, ignore_index) for name in self.weights}
        self.last_terms: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # losses in fp32 under AMP
        values = {name: term(logits, target) for name, term in self.terms.items()}
        self.last_terms = {name: value.detach() for name, value in values.items()}
        return sum(self.weights[name] * value for name, value in values.items())
