"""Optimizers and learning-rate schedules, each schedule with a linear warmup.

cosine, poly, constant and onecycle are defined per iteration and stepped every batch; step decays by
10x every third of the run (per epoch); plateau divides by 10 when the validation score stalls (per epoch).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau

from trainables.registry import Registry

OPTIMIZERS: Registry[Callable] = Registry("optimizer")
# name -> the multiplier of the base rate after warmup: factor(progress in [0, 1], step, steps_per_epoch, total)
SCHEDULES: Registry[Callable[[float, int, int, int], float]] = Registry("schedule")


@OPTIMIZERS.register("adamw")
def adamw(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=momentum > 0)


@SCHEDULES.register("cosine")
def cosine(progress: float, step: int, steps_per_epoch: int, total_steps: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * progress))


@SCHEDULES.register("poly")
def poly(progress: float, step: int, steps_per_epoch: int, total_steps: int) -> float:
    return (1 - progress) ** 0.9


@SCHEDULES.register("step")
def step_decay(progress: float, step: int, steps_per_epoch: int, total_steps: int) -> float:
    epochs = max(1, total_steps // steps_per_epoch)
    return 0.1 ** (step // steps_per_epoch // max(1, math.ceil(epochs / 3)))


@SCHEDULES.register("constant")
@SCHEDULES.register("plateau")  # constant until ReduceLROnPlateau lowers it (Schedule)
@SCHEDULES.register("onecycle")  # torch's OneCycleLR replaces the factor (Schedule)
def constant(progress: float, step: int, steps_per_epoch: int, total_steps: int) -> float:
    return 1.0


def check_schedule(name: str) -> str:
    return SCHEDULES.check(name)


def lr_factor(name: str, step: int, warmup_steps: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate after `step` optimizer steps (stepped schedules)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return SCHEDULES.get(name)(progress, step, steps_per_epoch, total_steps)


class Schedule:
    """One object the loop calls after every batch and every epoch, whatever the schedule."""

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, epochs: int, steps_per_epoch: int,
                 warmup_epochs: float = 0.0):
        self.name = check_schedule(name)
        total = epochs * steps_per_epoch
        self.warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), max(total - 1, 0))
        self.step_count = 0
        self.plateau = None
        if name == "onecycle":
            pct_start = max(self.warmup_steps / max(total, 1), 0.05)
            max_lrs = [group["lr"] for group in optimizer.param_groups]
            self.per_batch = OneCycleLR(optimizer, max_lr=max_lrs, total_steps=max(total, 1), pct_start=pct_start)
            return
        warmup_steps = self.warmup_steps  # not self: a lambda holding self would keep the optimizer in a cycle
        self.per_batch = LambdaLR(optimizer, lambda step: lr_factor(name, step, warmup_steps, total, steps_per_epoch))
        if name == "plateau":
            self.plateau = ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=2)

    def after_batch(self) -> None:
        self.step_count += 1
        if self.plateau is None or self.step_count <= self.warmup_steps:
            self.per_batch.step()

    def after_epoch(self, score: float) -> None:
        if self.plateau is not None and self.step_count > self.warmup_steps:
            self.plateau.step(score)
