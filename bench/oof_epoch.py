"""Which checkpoint should a promoted fold score its out-of-fold images with?

    .venv/bin/python bench/oof_epoch.py [--datasets demo,tgs_salt] [--epochs 20] [--seeds 0,1]

A fold's OOF score is meant to predict how its model does on images nobody has seen. Three protocols,
each run on the same folds through `trainables.train.training_epochs` (the loop every fold runs):
- best: the epoch with the best score on the fold's validation images, scored on those same images
  (what promote did before: the epoch is selected on the images it is then scored on);
- final: the last epoch, scored on the fold's validation images (nnU-Net's choice);
- inner: the epoch with the best score on an inner group split (15 %) of the fold's training images, the
  model trained on the other 85 %, scored on the fold's validation images.
For each: the OOF estimate (mean over folds of the validation score), the score of the same checkpoints on
a fixed held-out test split (20 %, group-aware, seeded) and the gap estimate - test. Scores are at the
training resolution (the same for every protocol). Unet/resnet18 (demo: a tiny timm encoder), CE + Dice,
flips, 3 group folds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from automl.config import TrialConfig
from automl.data.dataset import SegmentationDataset
from automl.data.splits import holdout, make_kfold_splits, strata
from automl.data.stats import label_stats
from automl.metrics import SegmentationMeter
from trainables.data import TrainData
from trainables.losses import HybridLoss
from trainables.train import Normalizer, evaluate, make_loaders, pick_device, training_epochs

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
RESIZE = {"tgs_salt": 64, "fls_sonar": 96, "facade": 96, "demo": 64}
FOLDS, INNER = 3, 0.15


def load(name: str, work: Path) -> SegmentationDataset:
    if name == "demo":
        from automl.data.demo import write_demo

        return SegmentationDataset.from_yaml(write_demo(work / "demo", task="multiclass", n=48, size=64))
    source = REALDATA / name
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.yaml"
    path.write_text((source / "dataset.yaml").read_text() + f"\nroot: {source}\ncache_dir: {work / 'cache'}\n")
    return SegmentationDataset.from_yaml(path)


def config_for(name: str, channels: int, epochs: int, seed: int) -> TrialConfig:
    encoder = "tu-test_resnet" if name == "demo" else "resnet18"
    return TrialConfig(model={"arch": "unet", "encoder": encoder, "in_channels": channels},
                       data={"resize": RESIZE[name], "augment": "flip", "batch_size": 8},
                       loss={"terms": {"ce": 1.0, "dice": 1.0}}, train={"epochs": epochs, "seed": seed})


def scorer(config: TrialConfig, dataset: SegmentationDataset, rows: list[int]):
    """model -> score on these rows, through the validation code every fold runs."""
    device = pick_device()
    _, loader = make_loaders(config, TrainData(dataset, rows[:1], rows), device)
    spec = dataset.spec
    loss_fn = HybridLoss(config.loss.terms, spec.task, spec.effective_ignore_index)
    normalize = Normalizer(device, channels_last=False, channels=config.model.in_channels)

    def score(model) -> float:
        meter = SegmentationMeter(spec.task, spec.num_outputs, spec.effective_ignore_index)
        return evaluate(model, loader, loss_fn, normalize, meter, amp=False)[0]
    return score


def curves(config, dataset, train_rows, select_rows, extra: dict[str, list[int]]) -> dict[str, list[float]]:
    """Per epoch: the score on the selection rows (validation) and on each extra set of rows."""
    scorers = {key: scorer(config, dataset, rows) for key, rows in extra.items()}
    out = {"select": [], **{key: [] for key in extra}}
    for epoch in training_epochs(config, TrainData(dataset, train_rows, select_rows)):
        out["select"].append(epoch.metrics["score"])
        for key, score in scorers.items():
            out[key].append(score(epoch.model))
    return out


def run(name: str, epochs: int, seed: int, work: Path) -> dict:
    dataset = load(name, work)
    stats = label_stats(dataset)
    labels = strata(stats.pixels, dataset.spec.task)
    is_test = holdout(dataset.groups, labels, 0.2, seed + 1000)
    test = np.flatnonzero(is_test).tolist()
    rest = np.flatnonzero(~is_test)
    ids = [dataset.ids[i] for i in rest]
    splits = make_kfold_splits(ids, [dataset.groups[i] for i in rest], labels[rest], FOLDS, seed)
    config = config_for(name, stats.input_channels(), epochs, seed)
    rows = {"best": [], "final": [], "inner": []}
    start = time.perf_counter()
    for fold in range(FOLDS):
        train_rows = [dataset.index_of[i] for i in splits.training(fold)]
        val_rows = [dataset.index_of[i] for i in splits.validation(fold)]
        one = curves(config, dataset, train_rows, val_rows, {"test": test})
        best = int(np.argmax(one["select"]))
        rows["best"].append((one["select"][best], one["test"][best], best + 1))
        rows["final"].append((one["select"][-1], one["test"][-1], epochs))
        is_inner = holdout([dataset.groups[r] for r in train_rows], labels[train_rows], INNER, seed + fold)
        inner_train = [r for r, inside in zip(train_rows, is_inner) if not inside]
        inner_val = [r for r, inside in zip(train_rows, is_inner) if inside]
        inner = curves(config, dataset, inner_train, inner_val, {"val": val_rows, "test": test})
        pick = int(np.argmax(inner["select"]))
        rows["inner"].append((inner["val"][pick], inner["test"][pick], pick + 1))
        print(json.dumps({"dataset": name, "seed": seed, "fold": fold,
                          **{protocol: values[-1] for protocol, values in rows.items()}}), flush=True)
    result = {"dataset": name, "seed": seed, "epochs": epochs, "images": len(dataset), "test_images": len(test),
              "seconds": time.perf_counter() - start}
    for protocol, values in rows.items():
        estimate, tested, chosen = map(np.array, zip(*values))
        result[protocol] = {"estimate": float(estimate.mean()), "test": float(tested.mean()),
                            "gap": float((estimate - tested).mean()), "epochs": chosen.tolist()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="demo,tgs_salt")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            if name != "demo" and not REALDATA.is_dir():
                print(f"skipped {name}: no {REALDATA}")
                continue
            for seed in map(int, args.seeds.split(",")):
                results.append(run(name, args.epochs, seed, Path(tmp) / f"{name}{seed}"))
                print(json.dumps(results[-1]), flush=True)
    print("\n| dataset | seeds | protocol | OOF estimate | held-out test | estimate - test | epochs chosen |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["dataset"] for r in results):
        mine = [r for r in results if r["dataset"] == name]
        for protocol in ("best", "final", "inner"):
            get = lambda key: np.array([r[protocol][key] for r in mine])  # noqa: E731
            epochs = sorted(e for r in mine for e in r[protocol]["epochs"])
            print(f"| {name} | {len(mine)} | {protocol} | {get('estimate').mean():.3f} | {get('test').mean():.3f} | "
                  f"{get('gap').mean():+.3f} +- {get('gap').std(ddof=1) if len(mine) > 1 else 0:.3f} | "
                  f"{epochs[0]}-{epochs[-1]} of {mine[0]['epochs']} |")


if __name__ == "__main__":
    main()
