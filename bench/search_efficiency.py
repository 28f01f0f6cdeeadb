"""TPE + ASHA on a 25% group subsample vs random search without pruning on full data, same trial count.

    .venv/bin/python bench/search_efficiency.py [--trials 12] [--epochs 8]

Both search the hybrid_loss space on the same demo dataset and score on the same held-out groups (the
holdout depends only on the seed); compute is counted in image-epochs (images through a training step, read
from every trial's metrics.csv), so it does not depend on how busy the machine was.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import optuna
from rich.console import Console

from automl.data.demo import write_demo
from automl.search import SearchOptions, run_search
from automl.store import RunDir


def arm(name: str, dataset_yaml: Path, runs: Path, trials: int, epochs: int, **options) -> dict:
    start = time.perf_counter()
    run_search(SearchOptions(space="hybrid_loss", data=dataset_yaml, study=name, runs_dir=runs, trials=trials,
                             max_epochs=epochs, wandb="off", fixed={"model.encoder": "tu-test_resnet"}, **options),
               echo=lambda line: None, console=Console(quiet=True))
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{runs / name / 'optuna.db'}")
    n_train = len(json.loads((runs / name / "search_split.json").read_text())["train"])
    image_epochs = RunDir(runs, name).images_trained()
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    return {"best": study.best_value, "image_epochs": image_epochs, "seconds": seconds, "train": n_train,
            "pruned": pruned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n", type=int, default=96)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-efficiency-"))
    try:
        dataset_yaml = write_demo(work / "data", "multiclass", n=args.n, size=64)
        smart = arm("tpe_asha_25", dataset_yaml, work / "runs", args.trials, args.epochs, subsample=0.25)
        plain = arm("random_full", dataset_yaml, work / "runs", args.trials, args.epochs, subsample=1.0,
                    sampler="random", prune=False)
        print(f"{args.trials} trials of up to {args.epochs} epochs each, demo multiclass ({args.n} images), mIoU on "
              f"the same held-out groups")
        for label, result in (("TPE + ASHA, 25% subsample ", smart), ("random, no pruning, full ", plain)):
            print(f"{label}: best mIoU {result['best']:.4f}  compute {result['image_epochs']:6d} image-epochs "
                  f"({result['train']} training images, {result['pruned']} pruned)  {result['seconds']:.0f} s")
        print(f"compute ratio random/full over TPE+ASHA/subsample: {plain['image_epochs'] / smart['image_epochs']:.1f}x; "
              f"best-score gap {plain['best'] - smart['best']:+.4f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
