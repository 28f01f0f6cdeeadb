"""`automl promote`: the best trials trained on full data, every fold of a group K-fold, as Ray Tune trials.

Each (model, fold) job trains on the other folds, keeps its final checkpoint (an epoch picked on the
validation images would flatter their score) and writes the probabilities
of its validation images (x255, uint8, at one eval resolution shared by all models). When all folds of a
model are done they are assembled into oof/<model>.npy (memory-mapped, one row per training image) and
oof/<model>.json (the image ids, folds and resolution). A fold with done.json is never trained again.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from automl import store
from automl.config import TrialConfig, load_dataset_spec
from automl.data.dataset import SegmentationDataset
from automl.data.splits import Splits, make_kfold_splits, saved_splits_for, strata
from automl.data.stats import label_stats
from automl.errors import UserError, require_at_least, require_positive
from automl.promoted import FoldResult, PromotedModel, PromotePlan, PromotedPaths, model_name


@dataclass
class PromoteOptions:
    study: str
    runs_dir: Path = Path("runs")
    top: int = 3
    folds: int = 5
    epochs: int | None = None
    trials: list[int] | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    address: str | None = None
    verbose: bool = False
    data: Path | None = None  # another dataset.yaml with the study's labelled images (e.g. automl pseudo's)


@dataclass(frozen=True)
class FoldContext:
    study_dir: str
    dataset: str
    configs: dict[str, dict]  # model name -> TrialConfig as JSON
    splits: dict[str, Any]  # Splits as a dict
    eval_size: tuple[int, int]
    threads: int
    pseudo_fold_masks: bool = False  # fold k trains on pseudo-labels made without fold k's labels


# ---------------------------------------------------------------- one (model, fold) job, in a Ray worker

def fold_dataset(context: FoldContext, fold: int) -> SegmentationDataset:
    """What fold `fold` trains on: with fold masks, its pseudo-labels are the ones its validation labels never
    reached."""
    spec = load_dataset_spec(context.dataset)
    return SegmentationDataset(spec.for_fold(fold) if context.pseudo_fold_masks else spec)


def run_fold(config: dict[str, Any], context: FoldContext) -> None:
    import ray
    import torch
    from ray import tune

    from automl.data.cache import ResizeCache
    from automl.data.formats import match_channels
    from trainables.data import TrainData
    from trainables.infer import predict_probabilities, to_uint8
    from trainables.train import build_model, load_checkpoint, pick_device, train

    torch.set_num_threads(max(1, context.threads))
    model, fold = config["job"]["model"], int(config["job"]["fold"])
    paths = PromotedPaths(context.study_dir)
    out = paths.fold_dir(model, fold)
    trial_config = TrialConfig(**context.configs[model])
    splits = Splits(**context.splits)
    dataset = fold_dataset(context, fold)
    position = dataset.index_of
    val_ids = splits.validation(fold)
    data = TrainData.from_ids(dataset, splits.training(fold), val_ids)
    # the final epoch, not the best one on val_ids: those images are then scored (bench/oof_epoch.py)
    result = train(trial_config, data, lambda epoch, m: tune.report({"score": m["score"], "epoch": epoch}),
                   out_dir=out, keep="final")
    device = pick_device()
    network = load_checkpoint(build_model(trial_config, dataset.spec.num_outputs), result.checkpoint).to(device)
    cache = ResizeCache(dataset, trial_config.data.resize)
    channels = trial_config.model.in_channels
    images = np.stack([match_channels(np.asarray(cache[position[i]].image), channels) for i in val_ids])
    probabilities = predict_probabilities(network, images, dataset.spec.task, device, context.eval_size,
                                          tile=trial_config.data.prediction_tile)
    store.save_npy(out / "oof.npy", to_uint8(probabilities))
    done = FoldResult(model=model, fold=fold, ids=val_ids, score=result.final_score,
                      checkpoint=result.checkpoint.name, best_epoch=result.best_epoch,
                      best_score=result.best_score, epochs=result.epochs_run,
                      node_id=ray.get_runtime_context().get_node_id())
    store.write_json(out / "done.json", done.model_dump(mode="json"))


# ---------------------------------------------------------------- the driver

def choose_trials(study, top: int, named: list[int] | None) -> list:
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if named:
        by_number = {t.number: t for t in complete}
        missing = [n for n in named if n not in by_number]
        if missing:
            raise UserError(f"trials {missing} are not COMPLETE in this study", key="--trials",
                            fix="pick numbers from `automl status`")
        return [by_number[n] for n in named]
    if not complete:
        raise UserError("the study has no COMPLETE trial to promote", key="STUDY",
                        fix="run more trials (`automl search --resume`) or pass --no-prune")
    return sorted(complete, key=lambda t: -t.value)[:top]


def eval_size_of(configs: dict[str, dict]) -> tuple[int, int]:
    from automl.data.cache import as_size

    return max(as_size(TrialConfig(**config).data.resize) for config in configs.values())


def folds_for(dataset: SegmentationDataset, paths: PromotedPaths, n_folds: int, seed: int) -> Splits:
    """The study's group K-fold of its labelled images: made once (StratifiedGroupKFold where it applies),
    then reused; pseudo-labelled images join every fold's training set and no validation set."""
    if not paths.folds.exists():
        labelled = np.flatnonzero(~dataset.training_only)
        sample_strata = strata(label_stats(dataset).pixels[labelled], dataset.spec.task)
        make_kfold_splits([dataset.ids[i] for i in labelled], [dataset.groups[i] for i in labelled],
                          sample_strata, n_folds, seed).save(paths.folds)
    splits = saved_splits_for(paths.folds, dataset)
    if splits.n_folds != n_folds:
        raise UserError(f"this study was promoted with {splits.n_folds} folds", key="--folds",
                        fix=f"pass --folds {splits.n_folds}, or use a new study")
    return splits


def pseudo_fold_masks(spec, paths: PromotedPaths, splits: Splits, echo) -> bool:
    """Whether each fold can train on pseudo-labels made without its labels: they were made by this
    study's fold models, for these very folds (a folds.json split again since holds other folds). Otherwise
    the pseudo-labels carry labels of the images the folds are scored on, and the out-of-fold scores of
    these models read high: say so."""
    pseudo = spec.pseudo
    if pseudo is None:
        return False
    if (pseudo.fold_masks and pseudo.folds_file and Path(pseudo.folds_file) == paths.folds.resolve()
            and pseudo.folds_fingerprint == splits.fingerprint):
        return True
    echo("note: these pseudo-labels were not made by this study's fold models, so every fold trains on labels "
         "derived from its own validation images: the out-of-fold scores of these models are optimistic")
    return False


def promote_data(options: PromoteOptions, settings) -> tuple[str, SegmentationDataset, str]:
    """The dataset.yaml the folds train on, the dataset, and the suffix of its model names ('' for the
    study's own; '-<name>' for another one, e.g. with pseudo-labels, so both rounds' models are kept)."""
    if options.data is None:
        return settings.dataset, SegmentationDataset(load_dataset_spec(settings.dataset)), ""
    path = str(Path(options.data).resolve())
    dataset = SegmentationDataset(load_dataset_spec(path))
    study_spec = load_dataset_spec(settings.dataset)
    if (dataset.spec.task, dataset.spec.class_names) != (study_spec.task, study_spec.class_names):
        raise UserError(f"{path} is a {dataset.spec.task} dataset of {dataset.spec.class_names}; the study's is "
                        f"{study_spec.task} of {study_spec.class_names}", key="--data",
                        fix="pass a dataset.yaml with the study's task and classes (as automl pseudo writes it)")
    if path == settings.dataset:
        return path, dataset, ""
    return path, dataset, "-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.spec.name)


def assemble_oof(paths: PromotedPaths, model: str, splits: Splits, eval_size: tuple[int, int], num_outputs: int
                 ) -> Path:
    """oof/<model>.npy: one row per validated image (in the folds' order), written atomically."""
    npy, index = paths.oof(model)
    ids = splits.validated_ids
    row = {image_id: i for i, image_id in enumerate(ids)}
    npy.parent.mkdir(parents=True, exist_ok=True)
    with store.atomic_path(npy) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                          shape=(len(ids), num_outputs, *eval_size))
        filled = np.zeros(len(ids), bool)
        for fold in range(splits.n_folds):
            done = paths.fold_result(model, fold)
            probabilities = np.load(paths.fold_dir(model, fold) / "oof.npy", mmap_mode="r")
            for image_id, probs in zip(done.ids, probabilities):
                array[row[image_id]] = probs
                filled[row[image_id]] = True
        array.flush()
        del array
        if not filled.all():
            raise RuntimeError(f"{(~filled).sum()} images of {model} have no out-of-fold prediction")
    store.write_json(index, {"model": model, "ids": ids, "fold": [f for f in splits.fold if f >= 0],
                             "eval_size": list(eval_size)})
    return npy


def check_job_resources(options) -> None:
    """What run_jobs reads from promote's or refit's options: resources per job and jobs at once."""
    require_at_least("--max-concurrent", options.max_concurrent, 1)
    require_positive("--cpus-per-trial", options.cpus_per_trial)
    require_at_least("--gpus-per-trial", options.gpus_per_trial, 0)


def check_promote_options(options: PromoteOptions) -> None:
    require_at_least("--folds", options.folds, 2)
    require_at_least("--top", options.top, 1)
    require_at_least("--epochs", options.epochs, 1)
    check_job_resources(options)
    if options.trials is not None and not options.trials:
        raise UserError("--trials names no trial", key="--trials", fix="e.g. --trials 3,7")


def run_promote(options: PromoteOptions, echo: Callable[[str], None] = print) -> dict:
    import optuna

    from automl.study_storage import open_storage

    check_promote_options(options)
    run = store.RunDir(options.runs_dir, options.study)
    settings = run.settings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=options.study, storage=open_storage(settings.storage))
    chosen = choose_trials(study, options.top, options.trials)
    data, dataset, suffix = promote_data(options, settings)
    paths = PromotedPaths(run.root)
    splits = folds_for(dataset, paths, options.folds, settings.seed)
    epochs = options.epochs or int(settings.space["fidelity"]["max_epochs"])
    configs = {}
    for trial in chosen:
        config = store.read_json(Path(trial.user_attrs["trial_dir"]) / "config.json")
        config["train"] = {**config.get("train", {}), "epochs": epochs}
        configs[model_name(trial.number) + suffix] = config
    before = paths.load_plan() if paths.plan.exists() else None
    for name in configs:
        trained_on = before.models[name].data if before and name in before.models else None
        if before and name in before.models and trained_on != (data if suffix else None):
            raise UserError(f"model {name} was promoted on {trained_on or settings.dataset}, not {data}",
                            key="--data", fix="give each round's dataset.yaml its own `name` (automl pseudo "
                                              "names it after its --out folder)")
    eval_size = before.eval_size if before else eval_size_of(configs)
    plan = PromotePlan(models=before.models if before else {}, folds=splits.n_folds, eval_size=eval_size,
                       metric=settings.metric, task=settings.task,
                       class_names=["foreground"] if settings.task == "binary" else dataset.spec.class_names)
    for name, trial in zip(configs, chosen):
        plan.models[name] = PromotedModel(trial=trial.number, search_score=trial.value, config=configs[name],
                                          data=data if suffix else None)
    store.write_json(paths.plan, plan.model_dump(mode="json"))
    jobs = [{"model": m, "fold": k} for m in configs for k in range(splits.n_folds) if not paths.is_done(m, k)]
    skipped = len(configs) * splits.n_folds - len(jobs)
    pseudo = int(dataset.training_only.sum())
    echo(f"promoting {', '.join(configs)} x {splits.n_folds} folds ({splits.method}), {epochs} epochs, "
         f"{len(dataset) - pseudo} images" + (f" + {pseudo} pseudo-labelled (training only)" if pseudo else "")
         + f"; {skipped} folds already done, {len(jobs)} to train")
    if jobs:
        from automl.data.cache import prebuild

        prebuild(dataset, [TrialConfig(**config).data.resize for config in configs.values()])
        context = FoldContext(str(run.root), data, configs, splits.__dict__, eval_size,
                              max(1, int(options.cpus_per_trial)), pseudo_fold_masks(dataset.spec, paths, splits, echo))
        run_jobs(run_fold, context, jobs, options, run.root, "promote")
    return summarize(paths, configs, splits, eval_size, dataset.spec.num_outputs, echo)


def run_jobs(worker: Callable, context, jobs: list[dict], options, study_dir: Path, name: str) -> None:
    """One Ray Tune trial per job (config["job"]), with the options' resources; Ray started if needed."""
    from ray import tune

    from automl.search import SearchOptions, start_ray

    started_ray = start_ray(SearchOptions(address=options.address, verbose=options.verbose))
    try:
        trainable = tune.with_resources(tune.with_parameters(worker, context=context),
                                        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
        tuner = tune.Tuner(trainable, param_space={"job": tune.grid_search(jobs)},
                           tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=options.max_concurrent),
                           run_config=tune.RunConfig(name=f"{name}-{int(time.time())}",
                                                     storage_path=str(study_dir / "ray"), verbose=0))
        tuner.fit()
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def summarize(paths: PromotedPaths, configs: dict, splits: Splits, eval_size, num_outputs: int, echo) -> dict:
    summary = {}
    for model in configs:
        scores = [paths.fold_result(model, k).score for k in range(splits.n_folds) if paths.is_done(model, k)]
        if len(scores) == splits.n_folds and not paths.oof(model)[0].exists():  # done folds never change
            assemble_oof(paths, model, splits, eval_size, num_outputs)
        summary[model] = {"fold_scores": scores, "mean": float(np.mean(scores)) if scores else None}
        shown = " ".join(f"{s:.4f}" for s in scores)
        state = "" if len(scores) == splits.n_folds else f" ({splits.n_folds - len(scores)} folds failed or missing)"
        echo(f"{model}: folds {shown}  mean {summary[model]['mean'] or 0:.4f}{state}")
        gain = late_gain([paths.fold_dir(model, k) / "metrics.csv" for k in range(splits.n_folds)])
        if gain is not None and gain >= STILL_RISING:
            echo(f"{model}: the fold models are undertrained: validation score still rising at the end "
                 f"({gain:+.3f} over the last quarter of the epochs, mean of the folds); more --epochs should "
                 f"help (done folds are kept: remove promoted/{model} and oof/{model}.* to retrain them)")
    return summary


STILL_RISING = 0.01  # metric points gained over the last quarter of the epochs


def late_gain(metrics_files: list[Path]) -> float | None:
    """Mean over folds of the validation score gained between 3/4 of the epochs and the last one."""
    gains = []
    for path in metrics_files:
        if not path.exists():
            continue
        scores = pd.read_csv(path)["score"].to_numpy()
        if len(scores) >= 4:
            gains.append(scores[-1] - scores[int(0.75 * len(scores)) - 1])
    return float(np.mean(gains)) if gains else None
