"""For a budget of compute, which search strategy picks the config that is best when trained on full data?

    .venv/bin/python bench/search_efficiency.py [--datasets demo,tgs_salt] [--seeds 0,1,2] [--trials N]
                                                [--epochs E] [--retrain-epochs R] [--subsample F] [--keep DIR]

Three strategies search the hybrid_loss space (loss weights and learning rate; Unet, the encoder pinned to
timm's tiny `tu-test_resnet`, resize pinned to 64 px) through `automl.search.run_search`:

    tpe_asha_sub  TPE + ASHA on the group subsample (the space's fidelity.subsample, 0.5, unless --subsample)
    random_full   random search, no pruning, on all of the search's training images (subsample 1.0)
    tpe_full      TPE, no pruning, subsample 1.0

Compute is counted in image-epochs: images through a training step, read from every trial's metrics.csv
(`train_images`), so it does not depend on how busy the machine was. B100 is the compute of random_full:
N trials x E epochs, no pruning. Budgets are 25 %, 50 % and 100 % of B100.

Every strategy runs once per seed until its cumulative compute reaches B100 (random_full and tpe_full take
N trials; tpe_asha_sub, whose pruned trials are cheap, is resumed with more trials until it gets there).
For each budget the strategy's result is the prefix of its trials, in trial-number order, whose cumulative
compute fits the budget, and its choice is the best COMPLETE trial of that prefix by the study's value (the
trial's best score on the search's own validation split) - what the strategy would have picked had it
been stopped at that budget. (Trials run two at a time, so a prefix is what a driver had launched by then,
give or take the one trial running beside it.) A pruned trial is never chosen; if a prefix holds no
complete trial, the best pruned trial is taken and the row says so (`fallback`).

Each chosen config is then retrained with one fixed protocol: its TrialConfig (the trial's config.json)
with train.epochs = R (default E) and train.seed = the bench seed, on all training images, via
`trainables.train.train`; it is scored on a fixed held-out test split with the training code's validation
(`train()` validates on TrainData.val_indices each epoch; the test images are passed as the validation
set and the FINAL epoch's score is taken, never the best epoch, so the test images choose nothing). The
score is therefore measured at the training resolution (64 px), not at the images' original size. A
config chosen twice (at two budgets, or by two strategies) is retrained once; training is seeded, so the
result would be the same. The retrains run two at a time, one thread each, like the search's trials.

The strategies share their first draws: TPE starts with random trials (min(10, max(3, trials // 3)) of
them) drawn from the same seed as random search, so with the default N = 12 the 25 % prefix of tpe_full
(3 trials) is random_full's, trial for trial, and tpe_asha_sub tries the same first configs on its subsample.

The test split is a seeded (seed + 1000), group-aware, stratified 20 % holdout (`automl.data.splits.holdout`,
as bench/real_data.py draws it). It is the `exclude:` list of the training dataset.yaml that the searches
read, so no search sees it; each search then draws its own validation split from the training images.
The bench seed also seeds the searches (their split and sampler) and the retrains. Results are
mean +- sd over the seeds; every seed has its own test split.

Datasets: `demo` (synthetic multiclass shapes, --n images of 64 px, mIoU) and `tgs_salt` from
../shared/realdata (217 seismic tiles of 101 px, resized to 64, binary IoU; skipped when the folder is
absent). Both use the tiny encoder: on tgs_salt at 64 px, 8 epochs of Unet/tu-test_resnet reach test IoU
0.37 against 0.40 for Unet/resnet18 at twice the time, so the tiny encoder keeps 3 seeds within the hour.

Caveat on the subsample: an epoch is at least train.min_steps_per_epoch (25) batches of 8 = 200 images.
Both datasets have fewer than 200 search training images, so an epoch costs 200 images whether the trial
trains on the subsample or on all of them: here the subsample saves no compute, and TPE + ASHA's savings
come from pruning alone.

Prints one JSON line per (dataset, seed, strategy) once that seed's retrains finish, then a markdown table
(budget x strategy -> held-out score of the chosen config) and, per dataset, TPE + ASHA at 25 % of the
compute as a percentage of random_full at 100 % (the project's goal: >= 99 %).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import optuna
import torch
from rich.console import Console

from automl.config import TrialConfig
from automl.data.dataset import SegmentationDataset
from automl.data.demo import write_demo
from automl.data.splits import holdout, strata
from automl.data.stats import label_stats
from automl.search import SearchOptions, run_search
from automl.store import RunDir
from trainables.data import TrainData
from trainables.train import train

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
ENCODER = "tu-test_resnet"
RESIZE = 64
BUDGETS = (0.25, 0.5, 1.0)
STRATEGIES = {  # name -> SearchOptions; subsample None = the space's fidelity.subsample
    "tpe_asha_sub": dict(sampler="tpe", prune=True, subsample=None),
    "random_full": dict(sampler="random", prune=False, subsample=1.0),
    "tpe_full": dict(sampler="tpe", prune=False, subsample=1.0),
}
LABELS = {"tpe_asha_sub": "TPE + ASHA, subsample", "random_full": "random, no pruning, full",
          "tpe_full": "TPE, no pruning, full"}
# per dataset: trials of random_full (N) and epochs per trial (E); --trials/--epochs override
SETTINGS = {"demo": {"trials": 12, "epochs": 5}, "tgs_salt": {"trials": 12, "epochs": 5}}


# ---------------------------------------------------------------- data

def dataset_yaml(name: str, work: Path, n_demo: int) -> Path:
    """The whole dataset (training and test images) as a dataset.yaml that reads and caches where it may."""
    if name == "demo":
        return write_demo(work / "data", "multiclass", n=n_demo, size=RESIZE)
    source = REALDATA / name
    path = work / f"{name}.yaml"
    path.write_text((source / "dataset.yaml").read_text() + f"\nroot: {source}\ncache_dir: {work / 'cache'}\n")
    return path


def test_split(full_yaml: Path, seed: int, work: Path) -> tuple[list[str], Path]:
    """A seeded 20 % group holdout and the training dataset.yaml that excludes it."""
    dataset = SegmentationDataset.from_yaml(full_yaml)
    is_test = holdout(dataset.groups, strata(label_stats(dataset).pixels, dataset.spec.task), 0.2, seed + 1000)
    test_ids = [dataset.ids[i] for i in np.flatnonzero(is_test)]
    exclude = work / f"test_ids.seed{seed}.txt"
    exclude.write_text("\n".join(test_ids) + "\n")
    text = full_yaml.read_text()
    if "root:" not in text:  # the demo's yaml reads relative to its own folder
        text += f"\nroot: {full_yaml.parent}\n"
    train_yaml = full_yaml.parent / f"{full_yaml.stem}.train.seed{seed}.yaml"
    train_yaml.write_text(text + f"exclude: {exclude}\n")
    return test_ids, train_yaml


# ---------------------------------------------------------------- searches

def trial_cost(trial, run: RunDir) -> int:
    """Image-epochs the trial trained, from its metrics.csv."""
    path = Path(trial.user_attrs.get("trial_dir", run.trial_dir(trial.number))) / "metrics.csv"
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        return sum(int(float(row.get("train_images") or 0)) for row in csv.DictReader(f))


def load_trials(run: RunDir) -> list[dict]:
    study = optuna.load_study(study_name=run.study, storage=f"sqlite:///{run.optuna_db}")
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state.name not in ("COMPLETE", "PRUNED", "FAIL"):
            continue
        best_seen = max(t.intermediate_values.values(), default=float("-inf"))
        rows.append({"number": t.number, "state": t.state.name, "cost": trial_cost(t, run),
                     "value": t.value if t.state.name == "COMPLETE" else None, "best_seen": best_seen,
                     "dir": t.user_attrs.get("trial_dir", str(run.trial_dir(t.number)))})
    return rows


def search(strategy: str, train_yaml: Path, runs: Path, seed: int, trials: int, epochs: int,
           subsample: float | None, target: int | None) -> tuple[list[dict], float]:
    """Run the strategy; when `target` (B100) is given, resume with more trials until its compute reaches it."""
    options = dict(STRATEGIES[strategy])
    if strategy == "tpe_asha_sub" and subsample is not None:
        options["subsample"] = subsample
    start, resume = time.perf_counter(), False
    for _ in range(6):
        run_search(SearchOptions(space="hybrid_loss", data=train_yaml, study=strategy, runs_dir=runs,
                                 trials=trials, max_epochs=epochs, seed=seed, wandb="off", resume=resume,
                                 fixed={"model.encoder": ENCODER, "data.resize": RESIZE}, **options),
                   echo=lambda line: None, console=Console(quiet=True))
        rows = load_trials(RunDir(runs, strategy))
        spent = sum(r["cost"] for r in rows)
        if target is None or spent >= target:
            break
        per_trial = spent / max(len(rows), 1)
        trials = len(rows) + math.ceil((target - spent) / max(per_trial, 1)) + 1
        resume = True
    return rows, time.perf_counter() - start


def choose(rows: list[dict], budget: float) -> dict:
    """The best complete trial among the longest prefix (by trial number) that fits the budget."""
    prefix, spent = [], 0
    for row in rows:
        if spent + row["cost"] > budget + 1e-9:
            break
        spent += row["cost"]
        prefix.append(row)
    complete = [r for r in prefix if r["state"] == "COMPLETE"]
    fallback = not complete
    pool = complete or prefix
    if not pool:
        return {"trials_used": 0, "spent": 0, "chosen": None}
    key = (lambda r: r["value"]) if complete else (lambda r: r["best_seen"])
    best = max(pool, key=lambda r: (key(r), -r["number"]))
    return {"trials_used": len(prefix), "spent": spent, "chosen": best, "fallback": fallback}


# ---------------------------------------------------------------- the fixed retrain protocol

def retrain_config(trial_dir: str, epochs: int, seed: int) -> dict:
    """The trial's TrialConfig with the fixed protocol's epochs and seed."""
    config = json.loads((Path(trial_dir) / "config.json").read_text())
    config["train"] = {**config.get("train", {}), "epochs": epochs, "seed": seed}
    return config


def retrain(config: dict, full_yaml: str, test_ids: list[str]) -> dict:
    """Train `config` on all training images (in a worker process, one thread); the FINAL epoch's test score."""
    torch.set_num_threads(1)  # two such workers share the two cores, as the search's two trials do
    full = SegmentationDataset.from_yaml(Path(full_yaml))
    test = set(test_ids)
    data = TrainData(full, [i for i, image_id in enumerate(full.ids) if image_id not in test],
                     [full.index_of[i] for i in test_ids])
    start = time.perf_counter()
    result = train(TrialConfig(**config), data)
    return {"score": result.final_score, "seconds": time.perf_counter() - start, "train_images": len(data.train_indices),
            "image_epochs": sum(h["train_images"] for h in result.history)}


def retrain_all(configs: dict[str, dict], full_yaml: Path, test_ids: list[str]) -> dict[str, dict]:
    """Every distinct config once, two at a time."""
    context = multiprocessing.get_context("spawn")
    workers = max(1, min(os.cpu_count() or 1, len(configs)))
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {key: pool.submit(retrain, config, str(full_yaml), test_ids) for key, config in configs.items()}
        return {key: future.result() for key, future in futures.items()}


# ---------------------------------------------------------------- one dataset, one seed

def bench_seed(name: str, full_yaml: Path, work: Path, seed: int, args, settings: dict) -> list[dict]:
    test_ids, train_yaml = test_split(full_yaml, seed, work)
    runs = work / f"runs.seed{seed}"
    trials, epochs = settings["trials"], settings["epochs"]
    retrain_epochs = args.retrain_epochs or epochs
    results, picks, b100 = [], {}, None
    for strategy in ("random_full", "tpe_full", "tpe_asha_sub"):  # random_full first: it defines B100
        initial = math.ceil(1.5 * trials) if strategy == "tpe_asha_sub" else trials  # ASHA: ~2/3 the cost
        rows, seconds = search(strategy, train_yaml, runs, seed, initial, epochs, args.subsample, b100)
        if strategy == "random_full":
            b100 = sum(r["cost"] for r in rows)
        split = json.loads((runs / strategy / "search_split.json").read_text())
        results.append({"dataset": name, "seed": seed, "strategy": strategy, "b100": b100,
                        "trials_run": len(rows), "image_epochs": sum(r["cost"] for r in rows),
                        "pruned": sum(r["state"] == "PRUNED" for r in rows),
                        "failed": sum(r["state"] == "FAIL" for r in rows),
                        "search_train_images": len(split["train"]), "search_val_images": len(split["val"]),
                        "test_images": len(test_ids), "search_seconds": round(seconds, 1), "budgets": {}})
        for fraction in BUDGETS:
            picks[strategy, fraction] = choose(rows, fraction * b100)
    # a config chosen twice (two budgets, or two strategies) is retrained once: training is seeded
    configs = {}
    for pick in picks.values():
        if pick["chosen"] is not None:
            config = retrain_config(pick["chosen"]["dir"], retrain_epochs, seed)
            pick["key"] = json.dumps(config, sort_keys=True)
            configs[pick["key"]] = config
    start = time.perf_counter()
    scores = retrain_all(configs, full_yaml, test_ids)
    retrain_seconds = time.perf_counter() - start
    for record in results:
        record["retrain_seconds_all"] = round(retrain_seconds, 1)
        record["retrained_configs"] = len(configs)
        for fraction in BUDGETS:
            pick = picks[record["strategy"], fraction]
            chosen = pick["chosen"]
            entry = {"budget": round(fraction * b100), "trials_used": pick["trials_used"], "spent": pick["spent"]}
            if chosen is not None:
                score = scores[pick["key"]]
                entry.update(trial=chosen["number"], fallback=pick["fallback"],
                             search_value=chosen["best_seen"] if pick["fallback"] else chosen["value"],
                             test_score=score["score"],
                             retrain_seconds=round(score["seconds"], 1))
            record["budgets"][str(fraction)] = entry
        print(json.dumps(record), flush=True)
    return results


# ---------------------------------------------------------------- the table

def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {sd:.3f}"


def print_table(records: list[dict], retrain_note: str) -> None:
    print(f"\nheld-out score of each strategy's chosen config, retrained on all training images ({retrain_note}); "
          f"mean ± sd over seeds")
    print("\n| dataset | budget: image-epochs (% of B100) | strategy | held-out score, mean ± sd | seeds | "
          "trials used (mean) |")
    print("|---|---|---|---|---|---|")
    summaries = []
    for name in dict.fromkeys(r["dataset"] for r in records):
        mine = [r for r in records if r["dataset"] == name]
        scores = {}
        for fraction in BUDGETS:
            budget = np.mean([r["budgets"][str(fraction)]["budget"] for r in mine if r["strategy"] == "random_full"])
            for strategy in STRATEGIES:
                entries = [r["budgets"][str(fraction)] for r in mine if r["strategy"] == strategy]
                values = [e["test_score"] for e in entries if "test_score" in e]
                scores[(fraction, strategy)] = values
                used = np.mean([e["trials_used"] for e in entries]) if entries else 0
                flag = " (fallback: no complete trial)" if any(e.get("fallback") for e in entries) else ""
                print(f"| {name} | {budget:,.0f} ({fraction:.0%}) | {LABELS[strategy]} | {mean_sd(values)}{flag} | "
                      f"{len(values)} | {used:.1f} |")
        smart, plain = scores[(0.25, "tpe_asha_sub")], scores[(1.0, "random_full")]
        if smart and plain:
            ratio = 100 * np.mean(smart) / np.mean(plain)
            summaries.append(f"{name}: TPE+ASHA at 25 %: {ratio:.1f} % of random-full at 100 % "
                             f"({np.mean(smart):.3f} vs {np.mean(plain):.3f}; goal >= 99 %: "
                             f"{'met' if ratio >= 99 else 'not met'})")
    print()
    for line in summaries:
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="demo,tgs_salt")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=None, help="random_full's trials N (B100 = N x E epochs)")
    parser.add_argument("--epochs", type=int, default=None, help="max epochs per search trial E")
    parser.add_argument("--retrain-epochs", type=int, default=None, help="epochs of the fixed retrain (default E)")
    parser.add_argument("--subsample", type=float, default=None,
                        help="TPE + ASHA's subsample (default: the hybrid_loss space's fidelity, 0.5)")
    parser.add_argument("--n", type=int, default=96, help="demo images")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folders here")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    records, retrain_epochs = [], {}
    for name in args.datasets.split(","):
        if name != "demo" and not (REALDATA / name).is_dir():
            print(f"skipped {name}: no {REALDATA / name}", flush=True)
            continue
        settings = {**SETTINGS.get(name, SETTINGS["demo"]),
                    **{k: v for k, v in (("trials", args.trials), ("epochs", args.epochs)) if v is not None}}
        retrain_epochs[name] = args.retrain_epochs or settings["epochs"]
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"bench-efficiency-{name}-", dir=args.keep))
        start = time.perf_counter()
        try:
            full_yaml = dataset_yaml(name, work, args.n)
            for seed in seeds:
                records += bench_seed(name, full_yaml, work, seed, args, settings)
        finally:
            if args.keep is None:
                shutil.rmtree(work, ignore_errors=True)
        print(f"{name}: {settings['trials']} random_full trials x {settings['epochs']} epochs, "
              f"{len(seeds)} seeds, {time.perf_counter() - start:.0f} s", flush=True)
    if records:
        note = ", ".join(f"{name}: {epochs} epochs" for name, epochs in retrain_epochs.items())
        print_table(records, f"{ENCODER} at {RESIZE} px, {note}, train.seed = the seed; final epoch's score on the "
                             f"test split, at {RESIZE} px")


if __name__ == "__main__":
    main()
