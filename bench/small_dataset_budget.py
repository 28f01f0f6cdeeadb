"""Does the same --max-epochs still starve a small dataset? One run per train.min_steps_per_epoch value.

    .venv/bin/python bench/small_dataset_budget.py [--datasets fls_sonar,tgs_salt] [--min-steps 1,10,25,50]

18 training images of a real dataset (../shared/realdata), 10 epochs of Unet/resnet18 at batch 8 through
`trainables.train` (the code every trial and fold runs), scored on 100 other images of the same dataset.
min_steps_per_epoch 1 is the old unit (an epoch = one pass = 3 optimizer steps here); an epoch is now
max(one pass, min_steps_per_epoch steps).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from automl.config import TrialConfig
from automl.data.dataset import SegmentationDataset
from automl.data.stats import label_stats
from trainables.data import TrainData
from trainables.train import train

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
RESIZE = {"fls_sonar": 128, "tgs_salt": 96, "facade": 192}


def run(name: str, min_steps: list[int], cache: Path) -> list[dict]:
    source = REALDATA / name
    dataset_yaml = cache / f"{name}.yaml"
    dataset_yaml.write_text((source / "dataset.yaml").read_text() + f"\nroot: {source}\ncache_dir: {cache}\n")
    dataset = SegmentationDataset.from_yaml(dataset_yaml)
    order = np.random.default_rng(0).permutation(len(dataset))
    data = TrainData(dataset, order[:18].tolist(), order[18:118].tolist())
    channels = label_stats(dataset).input_channels()
    rows = []
    for steps in min_steps:
        config = TrialConfig(model={"arch": "unet", "encoder": "resnet18", "in_channels": channels},
                             data={"resize": RESIZE[name], "augment": "flip", "batch_size": 8},
                             train={"epochs": 10, "min_steps_per_epoch": steps})
        start = time.perf_counter()
        result = train(config, data)
        rows.append({"dataset": name, "min_steps_per_epoch": steps, "optimizer_steps": result.history[-1]["steps"],
                     "best": result.best_score, "last": result.history[-1]["score"],
                     "metric": result.history[-1]["metric"], "seconds": time.perf_counter() - start})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="fls_sonar,tgs_salt")
    parser.add_argument("--min-steps", default="1,10,25,50")
    args = parser.parse_args()
    if not REALDATA.is_dir():
        print(f"skipped: no {REALDATA}")
        return
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name in args.datasets.split(","):
            rows += run(name, [int(v) for v in args.min_steps.split(",")], Path(cache))
    print("\n| dataset (18 train / 100 held-out images) | min_steps_per_epoch | optimizer steps in 10 epochs | "
          "held-out score (best epoch) | ratio to min_steps 1 | seconds |")
    print("|---|---|---|---|---|---|")
    base = {row["dataset"]: row["best"] for row in rows if row["min_steps_per_epoch"] == 1}
    for row in rows:
        ratio = row["best"] / base[row["dataset"]] if row["dataset"] in base else float("nan")
        print(f"| {row['dataset']} | {row['min_steps_per_epoch']} | {row['optimizer_steps']} | {row['metric']} "
              f"{row['best']:.3f} | {ratio:.2f}x | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
