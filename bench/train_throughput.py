"""Training images/s of `trainables.train` vs a plain smp + torch loop: same model, batch and data.

    .venv/bin/python bench/train_throughput.py [--n 64] [--size 128] [--epochs 3] [--encoder resnet18]

Both train the same architecture from the same seed on the same cached images (no augmentation), one after
the other in this process; only the training phase of each epoch is timed (trainables.train also validates
every epoch, which the plain loop does not do). The first epoch of each is a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch.utils.data import DataLoader, TensorDataset

from automl.config import TrialConfig
from automl.data.cache import ResizeCache
from automl.data.dataset import SegmentationDataset
from automl.data.demo import write_demo
from trainables.data import TrainData
from trainables.train import train


def plain_loop(images: torch.Tensor, masks: torch.Tensor, arch: str, encoder: str, classes: int, batch: int,
               epochs: int) -> float:
    """The ~20-line loop a person writes by hand; returns training images/s after the first epoch."""
    torch.manual_seed(0)
    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=classes)
    ce, dice = torch.nn.CrossEntropyLoss(ignore_index=255), smp.losses.DiceLoss("multiclass", ignore_index=255)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(images, masks), batch_size=batch, shuffle=True, drop_last=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    counted, seconds = 0, 0.0
    for epoch in range(epochs):
        model.train()
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            logits = model((x.float() - mean) / std)
            loss = 0.3 * ce(logits, y) + 0.7 * dice(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(x)
        if epoch > 0:
            counted, seconds = counted + seen, seconds + time.perf_counter() - start
    return counted / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        dataset = SegmentationDataset.from_yaml(write_demo(work / "data", "multiclass", n=args.n, size=args.size))
        cache = ResizeCache(dataset, args.size)
        cache.ensure()
        everything = list(range(len(dataset)))
        images = torch.from_numpy(np.stack([np.asarray(cache[i].image).transpose(2, 0, 1) for i in everything]))
        masks = torch.from_numpy(np.stack([np.asarray(cache[i].mask).astype(np.int64) for i in everything]))
        config = TrialConfig(model={"arch": args.arch, "encoder": args.encoder},
                             data={"resize": args.size, "augment": "none", "batch_size": args.batch},
                             loss={"terms": {"ce": 0.3, "dice": 0.7}}, optim={"lr": 1e-3, "weight_decay": 0.01},
                             schedule={"name": "constant"}, train={"epochs": args.epochs, "seed": 0})
        print(f"{args.arch}/{args.encoder}, {args.n} images of {args.size}px, batch {args.batch}, "
              f"{torch.get_num_threads()} threads, device cpu")
        plain = plain_loop(images, masks, args.arch, args.encoder, dataset.spec.num_outputs, args.batch, args.epochs)
        result = train(config, TrainData(dataset, everything, everything[: args.batch]), device="cpu")
        ours = float(np.mean([h["train_images_per_s"] for h in result.history[1:]]))
        print(f"plain smp + torch loop: {plain:8.2f} images/s")
        print(f"trainables.train:       {ours:8.2f} images/s")
        print(f"ratio trainables / plain: {ours / plain:.3f}  (goal >= 0.95)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
