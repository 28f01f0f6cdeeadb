"""Images/s of `automl predict` with no TTA, flip and flip+scale, on the same promoted ensemble and images.

    .venv/bin/python bench/predict_throughput.py [--n 64] [--size 128]

Builds a small study first (search 2 trials, promote the best to 2 folds, ensemble), then predicts the
same images three times in this process, writing an RLE CSV each time.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from automl.data.demo import write_demo
from automl.ensemble import run_ensemble
from automl.predict import run_predict
from automl.promote import PromoteOptions, run_promote
from automl.search import SearchOptions, run_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--encoder", default="resnet18")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    quiet = lambda line: None  # noqa: E731
    try:
        dataset_yaml = write_demo(work / "data", "multiclass", n=args.n, size=args.size)
        runs = work / "runs"
        run_search(SearchOptions(data=dataset_yaml, study="b", runs_dir=runs, trials=2, max_epochs=1, prune=False,
                                 wandb="off", fixed={"model.encoder": args.encoder}), echo=quiet,
                   console=Console(quiet=True))
        run_promote(PromoteOptions(study="b", runs_dir=runs, top=1, folds=2, epochs=1), echo=quiet)
        run_ensemble(runs, "b", echo=quiet)
        rates = {}
        for tta in ("none", "flip", "flip+scale"):
            start = time.perf_counter()
            run_predict(runs, "b", work / "data" / "images", work / f"{tta}.csv", tta=tta, scales=(0.75, 1.0, 1.25),
                        echo=quiet)
            rates[tta] = args.n / (time.perf_counter() - start)
        print(f"unet/{args.encoder}, 2 fold checkpoints, {args.n} images of {args.size}px, CPU")
        for tta, rate in rates.items():
            print(f"TTA {tta:<11} {rate:7.1f} images/s   ratio to none {rate / rates['none']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
