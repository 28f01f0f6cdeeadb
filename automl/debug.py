"""`automl debug`: the sanity check before GPU days. A tiny model overfits a few images; one line per check."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np

from automl.config import TrialConfig
from automl.data.cache import ResizeCache
from automl.data.dataset import SegmentationDataset
from automl.data.stats import image_channels, input_channels
from automl.errors import require_at_least
from trainables.augment import AUGMENTATIONS, apply, build_augmentation
from trainables.data import TrainData
from trainables.train import train


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def valid_mask_values(dataset: SegmentationDataset) -> set:
    spec = dataset.spec
    if spec.task == "multiclass":
        return set(range(spec.num_outputs)) | {spec.effective_ignore_index}
    return {0, 1} | ({spec.ignore_index} if spec.ignore_index is not None else set())


def check_augmentations(cache: ResizeCache, dataset: SegmentationDataset, index: int = 0) -> Check:
    """Every set keeps shapes and mask values; a flip moves mask and image together and flips back."""
    sample = cache[index]
    image, mask = np.asarray(sample.image), np.asarray(sample.mask)
    allowed = valid_mask_values(dataset)
    for name in AUGMENTATIONS.names():
        out_image, out_mask = apply(build_augmentation(name), image, mask)
        if out_image.shape != image.shape or out_mask.shape != mask.shape:
            return Check("augmentations", False, f"'{name}' changed shapes {image.shape}/{mask.shape} -> "
                                                 f"{out_image.shape}/{out_mask.shape}")
        if not set(np.unique(out_mask).tolist()) <= allowed:
            return Check("augmentations", False, f"'{name}' made mask values outside {sorted(allowed)}")
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    flipped_image, flipped_mask = apply(flip, image, mask)
    back_image, back_mask = apply(flip, flipped_image, flipped_mask)
    moved_together = np.array_equal(flipped_mask, mask[..., ::-1]) and np.array_equal(flipped_image, image[:, ::-1])
    if not (moved_together and np.array_equal(back_image, image) and np.array_equal(back_mask, mask)):
        return Check("augmentations", False, "a horizontal flip did not move the mask with the image")
    return Check("augmentations", True, f"{len(AUGMENTATIONS.names())} sets keep shapes and mask values; "
                                        f"a flip moves the mask with the image and round-trips")


def run_debug(dataset_yaml: str | Path, arch: str = "unet", encoder: str = "tu-test_resnet", size: int = 64,
              images: int = 8, epochs: int = 12, lr: float = 3e-3, echo=print) -> list[Check]:
    require_at_least("--size", size, 16)
    require_at_least("--images", images, 1)
    require_at_least("--epochs", epochs, 1)
    start = time.perf_counter()
    dataset = SegmentationDataset.from_yaml(dataset_yaml)
    spec = dataset.spec
    chosen = list(range(min(images, len(dataset))))
    checks = [Check("data", True, f"{len(dataset)} labelled images, {spec.num_outputs} outputs ({spec.task}, "
                                  f"{spec.labels.format}); using {len(chosen)}")]
    echo(checks[-1].line())
    cache = ResizeCache(dataset, size)
    cache.ensure(chosen)
    checks.append(check_augmentations(cache, dataset))
    echo(checks[-1].line())
    channels = input_channels(image_channels(dataset))  # what a search of this dataset would decide
    # one pass per epoch: the check is that a tiny model overfits a few images in `epochs` passes
    config = TrialConfig(model={"arch": arch, "encoder": encoder, "in_channels": channels},
                         data={"resize": size, "augment": "none", "batch_size": 4},
                         optim={"name": "adamw", "lr": lr, "weight_decay": 0.0},
                         schedule={"name": "constant"}, train={"epochs": epochs, "seed": 0, "min_steps_per_epoch": 1})
    result = train(config, TrainData(dataset, chosen, chosen))  # train = validation: it must overfit
    first, last = result.history[0], result.history[-1]
    checks.append(Check("loss falls", last["train_loss"] < 0.7 * first["train_loss"],
                        f"{first['train_loss']:.3f} -> {last['train_loss']:.3f} in {epochs} epochs "
                        f"(must fall below 70%)"))
    echo(checks[-1].line())
    metric = first["metric"]
    checks.append(Check("metric rises", last["score"] > first["score"] + 0.05,
                        f"{metric} {first['score']:.3f} -> {last['score']:.3f} on the training images"))
    echo(checks[-1].line())
    passed = sum(check.ok for check in checks)
    echo(f"debug: {passed}/{len(checks)} checks passed in {time.perf_counter() - start:.1f}s")
    return checks
