"""The epoch loop of one training run, composed from small parts.

`train(config, data, report)` trains, validates every epoch, calls `report(epoch, metrics)` (the search
layer passes Ray's reporter; plain use logs) and keeps the best checkpoint as a state_dict that loads with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import csv
import json
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from automl import store
from automl.config import DatasetSpec, FlipPolicy, TrialConfig
from automl.data.cache import ResizeCache
from automl.metrics import METRIC_NAME, SegmentationMeter
from trainables.augment import build_augmentation
from trainables.averaging import WeightAveraging
from trainables.data import SegmentationTorchDataset, TrainData
from trainables.losses import HybridLoss
from trainables.models import create_model, pad_to_multiple, segment
from trainables.optim import OPTIMIZERS, Schedule

Report = Callable[[int, dict], None]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the search marks such a trial pruned instead of crashing."""

    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"non-finite loss {value} at epoch {epoch}, step {step}: lower the learning rate or "
                         f"check the labels")


@dataclass
class TrainResult:
    best_score: float
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None

    @property
    def final_score(self) -> float:
        return self.history[-1]["score"] if self.history else -1.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(seed: int, worker: int) -> None:
    np.random.seed((seed + worker) % 2**32)
    random.seed(seed + worker)


def pick_device(device: str | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class Normalizer:
    """uint8 NCHW batch -> float, ImageNet-normalised, on the device (cheaper than in the workers).
    One channel (gray) takes the mean of ImageNet's three statistics."""

    def __init__(self, device: torch.device, channels_last: bool, channels: int = 3):
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((sum(IMAGENET_MEAN) / 3,),
                                                                         (sum(IMAGENET_STD) / 3,))
        self.mean = torch.tensor(mean, device=device).view(1, channels, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, channels, 1, 1) * 255
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).float()
        return ((images - self.mean) / self.std).contiguous(memory_format=self.memory_format)


def flip_policy(config: TrialConfig, spec: DatasetSpec) -> FlipPolicy:
    """The run's flips: the config's (a search saves the resolved policy there), else the dataset.yaml's."""
    return config.data.flips or spec.flips or FlipPolicy()


def images_per_epoch(train_images: int, batch_size: int, min_steps: int) -> int:
    """An epoch is max(one pass, min_steps optimizer steps): small datasets are passed over several times."""
    return max(train_images, min_steps * batch_size)


def make_loaders(config: TrialConfig, data: TrainData, device: torch.device) -> tuple[DataLoader, DataLoader]:
    spec = data.dataset.spec
    cache = ResizeCache(data.dataset, config.data.resize, workers=max(1, config.train.num_workers or 2))
    cache.ensure(data.train_indices + data.val_indices)  # decode once, before the first epoch
    flips = flip_policy(config, spec)
    augmentation = build_augmentation(config.data.augment, config.data.crop, seed=config.train.seed,
                                      horizontal=flips.horizontal, swaps=flips.swaps(spec.class_names),
                                      ignore_index=spec.training_ignore_index or 255)
    channels = config.model.in_channels
    train_set = SegmentationTorchDataset(cache, data.train_indices, spec.task, augmentation, channels)
    val_set = SegmentationTorchDataset(cache, data.val_indices, spec.task, channels=channels)
    generator = torch.Generator().manual_seed(config.train.seed)
    options = dict(num_workers=config.train.num_workers, pin_memory=device.type == "cuda",
                   persistent_workers=config.train.num_workers > 0,
                   worker_init_fn=partial(seed_worker, config.train.seed))
    batch_size = config.data.batch_size
    epoch_images = images_per_epoch(len(train_set), batch_size, config.train.min_steps_per_epoch)
    # whole shuffled passes, repeated until the epoch has its images (no image twice before all once)
    sampler = RandomSampler(train_set, num_samples=epoch_images, generator=generator)
    # drop only a last batch of one image (BatchNorm cannot train on it); small datasets keep every image
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler,
                              drop_last=epoch_images % batch_size == 1, **options)
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False, **options)
    return train_loader, val_loader


def train_one_epoch(model, loader, loss_fn, optimizer, schedule, scaler, normalize, epoch: int, amp: bool,
                    averaging: WeightAveraging | None = None) -> tuple[float, int]:
    model.train()
    total, images = torch.zeros((), device=normalize.device), 0
    for step, (x, y) in enumerate(loader):
        x, y = normalize(x), y.to(normalize.device, non_blocking=True)
        with torch.autocast(normalize.device.type, enabled=amp):
            logits = segment(model, x)
        loss = loss_fn(logits, y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(epoch, step, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        schedule.after_batch()
        if averaging is not None:
            averaging.after_batch(model)
        total += loss.detach() * len(x)
        images += len(x)
    return float(total) / max(images, 1), images


@torch.no_grad()
def evaluate(model, loader, loss_fn, normalize, meter: SegmentationMeter, amp: bool) -> tuple[float, np.ndarray, float]:
    model.eval()
    total, images = torch.zeros((), device=normalize.device), 0
    for x, y in loader:
        x, y = normalize(x), y.to(normalize.device, non_blocking=True)
        with torch.autocast(normalize.device.type, enabled=amp):
            logits = segment(model, x)
        total += loss_fn(logits, y) * len(x)
        images += len(x)
        meter.update(logits.float(), y)
    return meter.compute(), meter.per_class(), float(total) / max(images, 1)


def build_model(config: TrialConfig, num_outputs: int) -> torch.nn.Module:
    return create_model(config.model.arch, config.model.encoder, num_outputs, config.model.encoder_weights,
                        in_channels=config.model.in_channels)


@dataclass
class Epoch:
    """One finished epoch: its metrics and the model as it is at the end of it (eval mode)."""

    number: int
    metrics: dict
    model: torch.nn.Module


def training_epochs(config: TrialConfig, data: TrainData, device: str | None = None) -> Iterator[Epoch]:
    """Train epoch by epoch, validating after each (if there are validation images); yields every epoch (the
    consumer decides what to keep)."""
    spec = data.dataset.spec
    seed_everything(config.train.seed)
    device = pick_device(device)
    cuda = device.type == "cuda"
    amp = config.train.amp and cuda
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = build_model(config, spec.num_outputs).to(device, memory_format=torch.channels_last if cuda else
                                                     torch.contiguous_format)
    train_loader, val_loader = make_loaders(config, data, device)
    loss_fn = HybridLoss(config.loss.terms, spec.task, spec.training_ignore_index)
    optimizer = OPTIMIZERS.get(config.optim.name)(model.parameters(), config.optim.lr, config.optim.weight_decay,
                                                  config.optim.momentum)
    schedule = Schedule(optimizer, config.schedule.name, config.train.epochs, len(train_loader),
                        config.schedule.warmup_epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    normalize = Normalizer(device, channels_last=cuda, channels=config.model.in_channels)
    swa = config.train.swa
    averaging = WeightAveraging(model, config.train.epochs, config.train.ema, swa.start if swa else None)

    def training_inputs():
        """For SWA's BatchNorm statistics: the training images once, unaugmented, in order, from a loader of
        their own (the training loader's sampler and augmentation stay as they would be without SWA)."""
        images = SegmentationTorchDataset(ResizeCache(data.dataset, config.data.resize), data.train_indices,
                                          spec.task, channels=config.model.in_channels)
        return (pad_to_multiple(normalize(x)) for x, _ in DataLoader(images, batch_size=config.data.batch_size))

    steps = 0
    for epoch in range(1, config.train.epochs + 1):
        start = time.perf_counter()
        train_loss, images = train_one_epoch(model, train_loader, loss_fn, optimizer, schedule, scaler, normalize,
                                             epoch, amp, averaging)
        train_seconds = time.perf_counter() - start
        with torch.autocast(device.type, enabled=amp):
            evaluated = averaging.model_after_epoch(model, epoch, training_inputs)
        meter = SegmentationMeter(spec.task, spec.num_outputs, spec.effective_ignore_index)
        if data.val_indices:
            score, per_class, val_loss = evaluate(evaluated, val_loader, loss_fn, normalize, meter, amp)
            schedule.after_epoch(score)
        else:  # a refit on every image: nothing held out to score
            score, per_class, val_loss = float("nan"), np.array([]), float("nan")
        steps += len(train_loader)
        yield Epoch(epoch, {"epoch": epoch, "score": score, "metric": METRIC_NAME[spec.task],
                            "train_loss": train_loss, "val_loss": val_loss, "lr": optimizer.param_groups[0]["lr"],
                            "steps": steps, "steps_per_epoch": len(train_loader), "train_images": images,
                            "train_images_per_s": images / train_seconds,
                            "seconds": time.perf_counter() - start,
                            "per_class": [None if np.isnan(v) else float(v) for v in per_class]}, evaluated)


def train(config: TrialConfig, data: TrainData, report: Report | None = None, out_dir: str | Path | None = None,
          device: str | None = None, keep: str = "best") -> TrainResult:
    """Train and validate every epoch (with no validation images, as a refit on every image: train only,
    the scores NaN). keep="best" saves the checkpoint of the best validation epoch
    (best.pt); keep="final" saves the last epoch's (final.pt), for predictions scored on the validation
    images themselves, where picking the epoch on them would flatter the score."""
    if keep not in ("best", "final"):
        raise ValueError(f"keep must be 'best' or 'final', not {keep!r}")
    if keep == "best" and not data.val_indices:
        raise ValueError("keep='best' needs validation images to pick the epoch; without them, keep='final'")
    out = Path(out_dir) if out_dir else None
    if out:
        store.write_json(out / "config.json", config.model_dump(mode="json"))
    result = TrainResult(best_score=-1.0, best_epoch=0, epochs_run=0)
    for epoch in training_epochs(config, data, device):
        score = epoch.metrics["score"]
        result.epochs_run = epoch.number
        result.history.append(epoch.metrics)
        if score > result.best_score:
            result.best_score, result.best_epoch = score, epoch.number
            if out and keep == "best":
                result.checkpoint = save_checkpoint(epoch.model, out / "best.pt")
        if out and keep == "final" and epoch.number == config.train.epochs:
            result.checkpoint = save_checkpoint(epoch.model, out / "final.pt")
        if out:
            write_metrics(out / "metrics.csv", result.history)
        if report:
            report(epoch.number, epoch.metrics)
    return result


def save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with store.atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def write_metrics(path: Path, history: list[dict]) -> None:
    """The whole history, rewritten atomically each epoch (a few rows), so a kill never leaves half a line."""
    rows = [{key: (json.dumps(value) if isinstance(value, list) else value) for key, value in metrics.items()}
            for metrics in history]
    with store.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
