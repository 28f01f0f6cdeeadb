"""`automl train`: one training run of one TrialConfig on a group holdout of the dataset."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from automl.config import load_dataset_spec, load_trial_config
from automl.data.dataset import SegmentationDataset
from automl.errors import UserError
from automl.data.stats import label_stats
from automl.plan import plan_data
from automl.pseudo import holdout_note
from trainables.data import TrainData
from trainables.train import TrainResult, train


def run_single(config_path: str | Path, dataset_yaml: str | Path, out: str | Path | None = None,
               val_fraction: float = 0.2, seed: int = 0, echo=print) -> TrainResult:
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}", key="--val-fraction")
    load_trial_config(config_path)  # a mistake in the file stops here, before the labels are read
    dataset = SegmentationDataset(load_dataset_spec(dataset_yaml))
    stats = label_stats(dataset)  # one read of the labels: the plan and the stratified split
    plan = plan_data(dataset, stats.subset(np.flatnonzero(~dataset.training_only)))  # pseudo-labels decide nothing
    for note in [*plan.notes(), holdout_note(dataset)]:
        if note:
            echo(note)
    config = load_trial_config(config_path, defaults=plan.defaults())
    out = Path(out) if out else Path("runs") / "train" / time.strftime("%Y%m%d-%H%M%S")
    data = TrainData.holdout_split(dataset, stats, val_fraction, seed)
    echo(f"training {config.model.arch}/{config.model.encoder} on {len(data.train_indices)} images, "
         f"validating on {len(data.val_indices)}; writing {out}")

    def report(epoch: int, metrics: dict) -> None:
        echo(f"epoch {epoch:3d}  {metrics['metric']} {metrics['score']:.4f}  train loss {metrics['train_loss']:.4f}  "
             f"val loss {metrics['val_loss']:.4f}  lr {metrics['lr']:.2e}  {metrics['seconds']:.1f}s")

    result = train(config, data, report, out_dir=out)
    echo(f"best {result.history[0]['metric']} {result.best_score:.4f} at epoch {result.best_epoch}; "
         f"checkpoint {result.checkpoint}")
    return result
