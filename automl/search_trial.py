"""Inside one search trial (a Ray worker): build the TrialConfig, train, report every epoch to Tune."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl import store
from automl.config import load_dataset_spec
from automl.data.dataset import SegmentationDataset
from automl.errors import UserError
from automl.space import unflatten

TRIAL_NUMBER = "__trial_number"


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its sampled parameters; shipped to the workers once."""

    study: str
    study_dir: str
    dataset: str
    fixed: dict[str, Any]
    max_epochs: int
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    wandb: str
    threads: int


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The function trainable: build the TrialConfig, train, report every epoch to Tune."""
    import ray
    import torch
    from ray import tune

    from automl.config import TrialConfig
    from trainables.data import TrainData
    from trainables.train import NonFiniteLossError, train

    torch.set_num_threads(max(1, context.threads))
    config = dict(config)
    number = int(config.pop(TRIAL_NUMBER))
    trial_dir = Path(context.study_dir) / "trials" / f"{number:04d}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "error.txt").unlink(missing_ok=True)
    flat = {**context.fixed, **config, "train.epochs": context.max_epochs}
    best = {"score": 0.0}
    node = {"node_id": ray.get_runtime_context().get_node_id()}  # which machine of a cluster ran it
    run = start_wandb(context, number, flat, trial_dir)
    try:
        trial_config = TrialConfig(**unflatten(flat))
        dataset = SegmentationDataset(load_dataset_spec(context.dataset))
        data = TrainData.from_ids(dataset, context.train_ids, context.val_ids)

        def report(epoch: int, metrics: dict) -> None:
            best["score"] = max(best["score"], metrics["score"])
            row = {k: v for k, v in metrics.items() if not isinstance(v, (list, str))}
            if run is not None:
                run.log(row, step=epoch)
            tune.report({**row, **node, "best_score": best["score"]})

        train(trial_config, data, report, out_dir=trial_dir)
    except NonFiniteLossError as e:
        store.write_text(trial_dir / "error.txt", str(e) + "\n")
        tune.report({"score": best["score"], "best_score": best["score"], "epoch": e.epoch, "nonfinite": 1.0,
                     **node})
    except Exception as e:
        message = e.line() if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        store.write_text(trial_dir / "error.txt", " ".join(message.split()) + "\n")
        store.write_text(trial_dir / "traceback.txt", traceback.format_exc())
        raise
    finally:
        if run is not None:
            run.finish()


def start_wandb(context: TrialContext, number: int, flat: dict, trial_dir: Path):
    """One wandb run per trial, grouped by study; offline unless asked, so it never waits on a network."""
    if context.wandb == "off":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    return wandb.init(project="seg-automl", group=context.study, name=f"{context.study}-{number:04d}",
                      dir=str(trial_dir), mode=context.wandb, config=flat, reinit="finish_previous")


def final_state(result: dict | None, error: bool, max_epochs: int) -> str:
    if error:
        return "FAIL"
    if not result or result.get("nonfinite") or result.get("epoch", 0) < max_epochs:
        return "PRUNED"
    return "COMPLETE"
