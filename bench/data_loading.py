"""Images/s of loading 2048x2048 PNG samples at 512x512: through the resize cache vs decode + resize each time.

    .venv/bin/python bench/data_loading.py [--n 16] [--epochs 3]

Both paths load the same samples in the same process, one after the other; the source files sit in the OS
page cache for both (the first cache pass builds the cache and is reported on its own).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from automl.data.cache import ResizeCache, resize_image, resize_mask
from automl.data.dataset import SegmentationDataset
from automl.data.demo import write_demo


def images_per_second(load, n: int, epochs: int) -> float:
    start = time.perf_counter()
    checksum = 0
    for _ in range(epochs):
        for i in range(n):
            image, mask = load(i)
            checksum += int(image[::64, ::64].sum()) + int(np.asarray(mask)[..., ::64, ::64].sum())
    assert checksum > 0
    return n * epochs / (time.perf_counter() - start)


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

        def decode_and_resize(i):
            sample = dataset.load(i)
            return resize_image(sample.image, size), resize_mask(sample.mask, size)

        cache = ResizeCache(dataset, args.size, root=work / "cache", workers=1)
        start = time.perf_counter()
        cache.ensure()
        build = args.n / (time.perf_counter() - start)

        def cached(i):
            sample = cache[i]
            return np.asarray(sample.image), np.asarray(sample.mask)

        decoded = images_per_second(decode_and_resize, args.n, args.epochs)
        from_cache = images_per_second(cached, args.n, args.epochs)
        print(f"building the cache (1 thread, once): {build:8.1f} images/s")
        print(f"decode + resize every time:          {decoded:8.1f} images/s")
        print(f"through the cache (memory-mapped):   {from_cache:8.1f} images/s")
        print(f"ratio cache / decode: {from_cache / decoded:.1f}x  (goal >= 5x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
