"""Peak memory and time of ensemble selection on a large OOF library, streamed from disk.

    .venv/bin/python bench/ensemble_memory.py [--models 20] [--images 1000] [--classes 10] [--side 128]

Writes M synthetic OOF files (uint8 probabilities, N x C x side x side: 3.3 GB for the defaults) and the
labels, then runs the selection `automl ensemble` runs, cross-validated over 5 folds (each fold scored by
the greedy selection, max 5 members, made on the other 4; per-image held-out scores), and the hard vote. Peak RSS is the kernel's high-water mark
(VmHWM, reset after the files are written) and should stay flat as --images grows.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from automl.ensemble import Library, cross_validate, greedy_selection, single_scores, tuned, vote_score
from automl.store import NpyRows


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the high-water mark of resident memory


def peak_rss_mb() -> float:
    """VmHWM: the peak resident set since the last reset (ru_maxrss cannot be reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_library(folder: Path, models: int, images: int, classes: int, side: int) -> tuple[list[Path], np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.lib.format.open_memmap(folder / "labels.npy", "w+", np.uint8, (images, side, side))
    paths = []
    for start in range(0, images, 50):
        labels[start:start + 50] = rng.integers(0, classes, (min(50, images - start), side, side), dtype=np.uint8)
    for m in range(models):
        path = folder / f"model{m:02d}.npy"
        oof = np.lib.format.open_memmap(path, "w+", np.uint8, (images, classes, side, side))
        for start in range(0, images, 50):
            truth = np.asarray(labels[start:start + 50])
            noise = rng.integers(0, 120, (len(truth), classes, side, side), dtype=np.uint8)
            hit = rng.random(truth.shape) < 0.5 + 0.01 * m  # later models are a little better
            noise[np.arange(len(truth))[:, None, None], truth, np.arange(side)[None, :, None], np.arange(side)] += \
                (hit * 120).astype(np.uint8)
            oof[start:start + 50] = noise
        oof.flush()
        del oof
        paths.append(path)
    labels.flush()
    return paths, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--side", type=int, default=128)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ensemble-"))
    try:
        size_gb = args.models * args.images * args.classes * args.side ** 2 / 1e9
        print(f"writing {args.models} OOF files of {args.images} x {args.classes} x {args.side}^2 uint8 "
              f"({size_gb:.1f} GB) ...")
        paths, _ = write_library(work, args.models, args.images, args.classes, args.side)
        labels = NpyRows(work / "labels.npy")
        reset_peak_rss()  # writing the files is not part of the measurement
        baseline = peak_rss_mb()
        library = Library([p.stem for p in paths], [NpyRows(p) for p in paths], lambda rows: labels[rows],
                          [str(i) for i in range(args.images)], "multiclass", args.classes, None,
                          folds=np.arange(args.images) % 5)

        def select(part: Library):
            return tuned(part, greedy_selection(part, max_size=5)[0])

        start = time.perf_counter()
        singles = single_scores(library)
        ensemble = cross_validate(library, select, per_image=True)
        hard = vote_score(library, list(np.argsort(-singles)), None)
        seconds = time.perf_counter() - start
        members = [sorted(library.names[i] for i in np.flatnonzero(d.weights)) for d in ensemble.decisions.values()]
        print(f"members chosen per fold: {members}")
        print(f"mIoU: ensemble {ensemble.score:.4f} (cross-validated), best single {singles.max():.4f} (in sample), "
              f"hard vote {hard:.4f}")
        print(f"time {seconds:.0f} s; peak RSS {peak_rss_mb():.0f} MB (before selection {baseline:.0f} MB)  "
              f"(goal < 2048 MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
