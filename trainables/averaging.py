"""Weight averaging, built on torch.optim.swa_utils: what is validated and saved after each epoch.

EMA (`train.ema: 0.999`): an exponential moving average of the weights and BatchNorm buffers, updated
after every optimizer step; it is validated and checkpointed instead of the raw model. The decay warms up
as timm's ModelEmaV3 does, min(decay, (1 + n) / (10 + n)) after n updates, so a short run (or an early ASHA
rung) validates an average of recent weights, not of the initial ones; integer buffers (BatchNorm's batch
count) are copied, not averaged.
SWA (`train.swa: {start: 0.75}`): the plain mean of the weights at the end of each epoch from `start` of
the run on (0.75 of 8 epochs: epochs 7 and 8). A mean of weights does not match the BatchNorm statistics
of any of them, so they are recomputed with one forward pass over the training batches (`update_bn`)
after every averaged epoch; the scores reported in that phase are the average's.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim.swa_utils import AveragedModel, update_bn


def first_swa_epoch(start: float, epochs: int) -> int:
    """The first epoch (1-based) whose final weights join the SWA mean: the last (1 - start) of the run."""
    return min(epochs, math.floor(start * epochs) + 1)


def ema_decay(decay: float, updates: int) -> float:
    """The decay of the (updates + 1)-th update: warmed up, then `decay`."""
    return min(decay, (1 + updates) / (10 + updates))


def warm_ema(decay: float):
    """AveragedModel's multi_avg_fn for a warmed-up EMA (it is called from the second update on)."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        if not torch.is_floating_point(averaged[0]):
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1 - ema_decay(decay, int(updates)))
    return update


class WeightAveraging:
    """Keeps the EMA or SWA model beside the trained one; `model_after_epoch` says which to validate."""

    def __init__(self, model: torch.nn.Module, epochs: int, ema: float | None = None, swa_start: float | None = None):
        if ema is not None and swa_start is not None:
            raise ValueError("train.ema and train.swa exclude each other: choose one")
        self.ema = AveragedModel(model, multi_avg_fn=warm_ema(ema), use_buffers=True) if ema else None
        self.swa = AveragedModel(model) if swa_start is not None else None
        self.swa_from = first_swa_epoch(swa_start, epochs) if swa_start is not None else None

    @property
    def active(self) -> bool:
        return self.ema is not None or self.swa is not None

    def after_batch(self, model: torch.nn.Module) -> None:
        if self.ema is not None:
            self.ema.update_parameters(model)

    def model_after_epoch(self, model: torch.nn.Module, epoch: int,
                          batches: Callable[[], Iterable[torch.Tensor]]) -> torch.nn.Module:
        """The model to validate and checkpoint after `epoch`. `batches` yields normalised training inputs,
        for recomputing the SWA model's BatchNorm statistics."""
        if self.ema is not None:
            return self.ema.module
        if self.swa is not None and epoch >= self.swa_from:
            self.swa.update_parameters(model)
            update_bn(batches(), self.swa)
            return self.swa.module
        return model
