"""`automl refit`: each chosen model's config trained once more, on every training image, for `predict`.

The fold models each saw (K-1)/K of the images; their out-of-fold predictions are what the ensemble's
members, weights, thresholds and postprocessing were chosen on, and what its score estimates. A refit
model (AutoGluon's `refit_full`) trains the same config on all the images, with no image held out: no
score of its own, one network per member at predict time instead of K. `predict` uses the refit models
when every ensemble member has one (`--checkpoints folds` to use the fold models instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from automl import store
from automl.config import TrialConfig, load_dataset_spec
from automl.data.dataset import SegmentationDataset
from automl.promoted import EnsembleResult
from automl.data.splits import saved_splits_for
from automl.errors import RunFailed, UserError, require_at_least
from automl.promoted import PromotePlan, PromotedPaths, RefitResult


@dataclass
class RefitOptions:
    study: str
    runs_dir: Path = Path("runs")
    models: list[str] | None = None  # default: the ensemble's members
    epochs: int | None = None  # default: each model's promote epochs
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    address: str | None = None
    verbose: bool = False


@dataclass(frozen=True)
class RefitContext:
    study_dir: str
    datasets: dict[str, str]  # model name -> the dataset.yaml its fold models trained on
    configs: dict[str, dict]  # model name -> TrialConfig as JSON, with the refit epochs
    promote_epochs: dict[str, int]
    ids: dict[str, list[str]]  # model name -> every image its folds trained on (folds.json, + pseudo-labels)
    threads: int


def run_refit_job(config: dict[str, Any], context: RefitContext) -> None:
    """In a Ray worker: train one model on every training image and keep its final checkpoint."""
    import torch
    from ray import tune

    from trainables.data import TrainData
    from trainables.train import train

    torch.set_num_threads(max(1, context.threads))
    model = config["job"]["model"]
    out = PromotedPaths(context.study_dir).refit_dir(model)
    trial_config = TrialConfig(**context.configs[model])
    dataset = SegmentationDataset(load_dataset_spec(context.datasets[model]))
    data = TrainData.from_ids(dataset, context.ids[model], [])
    result = train(trial_config, data, lambda epoch, m: tune.report({"epoch": epoch, "steps": m["steps"]}),
                   out_dir=out, keep="final")
    done = RefitResult(model=model, epochs=result.epochs_run, promote_epochs=context.promote_epochs[model],
                       images=len(data.train_indices), steps=int(result.history[-1]["steps"]),
                       config=context.configs[model], checkpoint=result.checkpoint.name)
    store.write_json(out / "done.json", done.model_dump(mode="json"))


def models_to_refit(run: store.RunDir, plan: PromotePlan, named: list[str] | None) -> list[str]:
    if named:
        names = [plan.name_of(n) for n in named]
        unknown = [n for n in names if n not in plan.models]
        if unknown:
            raise UserError(f"no promoted model {', '.join(unknown)}", key="--models",
                            fix=f"use names from promote.json: {', '.join(plan.models)}")
        return list(dict.fromkeys(names))
    ensemble_file = run.root / "ensemble.json"
    if not ensemble_file.exists():
        raise UserError(f"study '{run.study}' has no ensemble to refit", key="STUDY",
                        fix=f"run `automl ensemble {run.study}` first, or pass --models trial0003,...")
    return list(dict.fromkeys(EnsembleResult.load(ensemble_file).members))


def refit_config(config: dict, epochs: int | None, name: str) -> dict:
    """The promoted config, with `epochs` if given; the plateau schedule is refused (it needs scores)."""
    parsed = TrialConfig(**config)
    if parsed.schedule.name == "plateau":
        raise UserError(f"{name} uses the plateau schedule, which lowers the learning rate when the validation "
                        f"score stalls; a refit holds no image out to score", key="--models",
                        fix="refit the other members (--models), or predict with the fold models")
    if epochs is not None:
        config = {**config, "train": {**config.get("train", {}), "epochs": epochs}}
    return config


def run_refit(options: RefitOptions, echo: Callable[[str], None] = print) -> dict[str, RefitResult]:
    from automl.promote import check_job_resources, run_jobs

    require_at_least("--epochs", options.epochs, 1)
    check_job_resources(options)
    run = store.RunDir(options.runs_dir, options.study)
    settings = run.settings()
    paths = PromotedPaths(run.root)
    plan = paths.require_plan(options.study)
    names = models_to_refit(run, plan, options.models)
    configs = {name: refit_config(plan.models[name].config, options.epochs, name) for name in names}
    epochs = {name: TrialConfig(**configs[name]).train.epochs for name in names}
    promote_epochs = {name: TrialConfig(**plan.models[name].config).train.epochs for name in names}
    sources = {name: plan.models[name].data or settings.dataset for name in names}
    datasets = {path: SegmentationDataset(load_dataset_spec(path)) for path in set(sources.values())}
    # refuses a dataset whose labelled images changed since promote
    ids = {name: saved_splits_for(paths.folds, datasets[sources[name]]).ids for name in names}
    stale = [name for name in names if paths.is_refit(name) and paths.refit_result(name).config != configs[name]]
    jobs = [{"model": name} for name in names if not paths.is_refit(name) or name in stale]
    for name in stale:  # until retrained, it is not a refit model: predict must not take the old one
        (paths.refit_dir(name) / "done.json").unlink()
    echo(f"refitting {', '.join(names)} on all {'/'.join(sorted({str(len(i)) for i in ids.values()}))} training images "
         f"({', '.join(str(epochs[n]) for n in names)} epochs); {len(names) - len(jobs)} already done, "
         f"{len(jobs)} to train" + (f" ({', '.join(stale)}: done with another config, retrained)" if stale else ""))
    longer = [name for name in names if epochs[name] != promote_epochs[name]]
    if longer:
        echo(f"note: {', '.join(longer)} refit for other epochs than its fold models "
             f"({', '.join(str(promote_epochs[n]) for n in longer)}); the ensemble's thresholds and postprocessing "
             f"were chosen on the fold models' OOF predictions, and may suit the refit model less well")
    if jobs:
        from automl.data.cache import prebuild

        for path, dataset in datasets.items():
            prebuild(dataset, [TrialConfig(**configs[job["model"]]).data.resize for job in jobs
                               if sources[job["model"]] == path])
        context = RefitContext(str(run.root), sources, configs, promote_epochs, ids,
                               max(1, int(options.cpus_per_trial)))
        run_jobs(run_refit_job, context, jobs, options, run.root, "refit")
    failed = [name for name in names if not paths.is_refit(name)]  # stale ones lost done.json above
    if failed:
        raise RunFailed(f"the refit of {', '.join(failed)} did not finish; predict keeps using the fold models",
                        file=paths.refit_dir(failed[0]), fix="see the error in the Ray log under "
                                                              f"{run.root / 'ray'}; rerun `automl refit` to retry")
    results = {name: paths.refit_result(name) for name in names}
    for name, result in results.items():
        echo(f"{name}: {result.epochs} epochs, {result.steps} steps on {result.images} images -> "
             f"{paths.refit_checkpoint(name)}")
    return results
