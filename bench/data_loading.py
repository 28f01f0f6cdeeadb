"""Images/s of loading 2048x2048 PNG samples at 512x512: through the resize cache vs decode + resize each time.

    .venv/bin/python bench/data_loading.py [--n 16] [--epochs 3]

Both paths go through the torch Dataset every training run reads (`trainables.data.SegmentationTorchDataset`,
no augmentation), sample by sample, and every pixel of every image and target is summed, so a sample counts
only once its bytes have been read. The cache path reads the memory-mapped .npy files of the resize cache;
the other decodes the PNGs and resizes each time. Same samples, same process, one after the other; the
source PNGs and the cache files both sit in the OS page cache (warm reads: the steady state of epoch 2 on);
the first cache pass builds the cache and is reported on its own.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from automl.data.cache import CachedSample, ResizeCache, resize_image, resize_mask
from automl.data.dataset import SegmentationDataset
from automl.data.demo import write_demo
from trainables.data import SegmentationTorchDataset


class DecodeEveryTime:
    """The resize cache's interface without a cache: decode the source files and resize, every time."""

    def __init__(self, dataset: SegmentationDataset, size: tuple[int, int]):
        self.dataset, self.size = dataset, size

    def __getitem__(self, index: int) -> CachedSample:
        sample = self.dataset.load(index)
        return CachedSample(sample.id, resize_image(sample.image, self.size), resize_mask(sample.mask, self.size),
                            sample.orig_size)


def images_per_second(source, task: str, n: int, epochs: int) -> tuple[float, int]:
    """Samples/s through the training Dataset, every pixel summed; (rate, checksum)."""
    dataset = SegmentationTorchDataset(source, list(range(n)), task)
    start = time.perf_counter()
    checksum = 0
    for _ in range(epochs):
        for i in range(n):
            image, target = dataset[i]
            checksum += int(image.sum(dtype=torch.int64)) + int(target.sum())
    return n * epochs / (time.perf_counter() - start), checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--source", type=int, default=2048)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        print(f"writing {args.n} synthetic {args.source}x{args.source} PNG images with mask PNGs ...")
        dataset = SegmentationDataset.from_yaml(write_demo(work / "data", "binary", n=args.n, size=args.source))
        size = (args.size, args.size)

        cache = ResizeCache(dataset, args.size, root=work / "cache", workers=1)
        start = time.perf_counter()
        cache.ensure()
        build = args.n / (time.perf_counter() - start)

        decoded, decoded_sum = images_per_second(DecodeEveryTime(dataset, size), "binary", args.n, args.epochs)
        from_cache, cached_sum = images_per_second(cache, "binary", args.n, args.epochs)
        assert decoded_sum == cached_sum > 0, "both paths must read the same pixels"
        print(f"building the cache (1 thread, once): {build:8.1f} images/s")
        print(f"decode + resize every time:          {decoded:8.1f} images/s")
        print(f"through the cache (memory-mapped):   {from_cache:8.1f} images/s")
        print(f"ratio cache / decode: {from_cache / decoded:.1f}x  (goal >= 5x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
