"""`automl search`: Ray Tune trials sampled by Optuna (seeded TPE) and pruned by ASHA, on a group subsample.

Ray stays at this edge. The Optuna storage (runs/<study>/optuna.db) is the study's record, and it tells
the truth: a trial ASHA stopped is PRUNED with its intermediate values (Ray's OptunaSearch would call it
COMPLETE), a crashed trial is FAIL with the error in a user attr, a non-finite loss is PRUNED.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from automl import store
from automl.config import StudySettings, load_dataset_spec
from automl.data.dataset import SegmentationDataset
from automl.data.splits import group_subsample, holdout, strata
from automl.data.stats import LabelStats, label_stats
from automl.errors import UserError, require_at_least, require_positive
from automl.metrics import METRIC_NAME
from automl.plan import DataPlan, plan_data
from automl.space import SearchSpace, load_space, unflatten

TRIAL_NUMBER = "__trial_number"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class SearchOptions:
    space: str = "hybrid_loss"
    data: Path = Path("dataset.yaml")
    study: str | None = None
    runs_dir: Path = Path("runs")
    trials: int = 20
    max_epochs: int | None = None
    subsample: float | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    time_budget: float | None = None
    address: str | None = None
    storage: str | None = None
    seed: int = 0
    wandb: str = "offline"
    resume: bool = False
    fixed: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.2
    verbose: bool = False
    sampler: str = "tpe"  # tpe | random
    prune: bool = True  # ASHA; False runs every trial to max_epochs (FIFO)


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


# ---------------------------------------------------------------- inside one trial (a Ray worker)

def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The function trainable: build the TrialConfig, train, report every epoch to Tune."""
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
            tune.report({**row, "best_score": best["score"]})

        train(trial_config, data, report, out_dir=trial_dir)
    except NonFiniteLossError as e:
        store.write_text(trial_dir / "error.txt", str(e) + "\n")
        tune.report({"score": best["score"], "best_score": best["score"], "epoch": e.epoch, "nonfinite": 1.0})
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


# ---------------------------------------------------------------- the searcher

def final_state(result: dict | None, error: bool, max_epochs: int) -> str:
    if error:
        return "FAIL"
    if not result or result.get("nonfinite") or result.get("epoch", 0) < max_epochs:
        return "PRUNED"
    return "COMPLETE"


def truthful_optuna_search(max_epochs: int, study_dir: Path, **kwargs):
    """Ray's OptunaSearch, but every finished trial is told to Optuna as what it really was."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class TruthfulOptunaSearch(OptunaSearch):
        def __init__(self, **options):
            super().__init__(**options)
            self._reported: dict[str, set[int]] = {}  # steps told to Optuna, per Ray trial

        def suggest(self, trial_id: str):
            params = super().suggest(trial_id)
            if params is not None:
                params[TRIAL_NUMBER] = self._ot_trials[trial_id].number
            return params

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if "epoch" in result and not result.get("nonfinite") and trial_id not in self._completed_trials:
                self._report(trial_id, result)

        def _report(self, trial_id: str, result: dict) -> None:
            trial, step = self._ot_trials[trial_id], int(result["epoch"])
            if step not in self._reported.setdefault(trial_id, set()):
                trial.report(result[self.metric], step)
                self._reported[trial_id].add(step)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            trial = self._ot_trials[trial_id]
            if result and "epoch" in result and not result.get("nonfinite"):
                self._report(trial_id, result)  # Tune skips on_trial_result for the result that stopped it
            state = final_state(result, error, max_epochs)
            trial_dir = study_dir / "trials" / f"{trial.number:04d}"
            trial.set_user_attr("trial_dir", str(trial_dir))
            trial.set_user_attr("ray_trial_id", trial_id)
            trial.set_user_attr("epochs", int((result or {}).get("epoch", 0)))
            trial.set_user_attr("wall_time_s", float((result or {}).get("time_total_s", 0.0)))
            error_file = trial_dir / "error.txt"
            if error_file.exists():
                key = "nonfinite_loss" if (result or {}).get("nonfinite") else "error"
                trial.set_user_attr(key, error_file.read_text().strip())
            if state == "COMPLETE":
                self._ot_study.tell(trial, float(result.get("best_score", result[self.metric])))
            else:
                self._ot_study.tell(trial, state=getattr(optuna.trial.TrialState, state))
            self._completed_trials.add(trial_id)

    return TruthfulOptunaSearch(**kwargs)


# ---------------------------------------------------------------- the driver

def storage_url(options: SearchOptions, run: store.RunDir) -> str:
    return options.storage or f"sqlite:///{run.optuna_db}"


def open_storage(url: str):
    import optuna

    try:
        if url.startswith("sqlite"):
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        return optuna.storages.RDBStorage(url)
    except Exception as e:
        raise UserError(f"cannot open the Optuna storage: {e}", key="--storage",
                        fix="check the URL, e.g. sqlite:///runs/study/optuna.db or postgresql://user@host/db") from None


def median_side(stats: LabelStats) -> int:
    return int(np.median(stats.sizes.max(axis=1)))


def make_search_split(dataset: SegmentationDataset, stats: LabelStats, subsample: float, val_fraction: float,
                      seed: int) -> dict:
    """One fixed validation holdout (so scores compare) and a seeded group subsample of the rest."""
    sample_strata = strata(stats.pixels, dataset.spec.task)
    is_val = holdout(dataset.groups, sample_strata, val_fraction, seed)
    train_pool = np.flatnonzero(~is_val)
    chosen = group_subsample([dataset.groups[i] for i in train_pool], sample_strata[train_pool], subsample, seed)
    ids = dataset.ids
    return {"seed": seed, "subsample": subsample, "val_fraction": val_fraction,
            "train": [ids[i] for i in train_pool[chosen]], "val": [ids[i] for i in np.flatnonzero(is_val)]}


def resolve_settings(options: SearchOptions, run: store.RunDir, space: SearchSpace, task: str, plan: DataPlan
                     ) -> StudySettings:
    return StudySettings(decisions=plan.to_dict(),
        study=run.study, dataset=str(Path(options.data).resolve()), task=task, metric=METRIC_NAME[task],
        space=space.to_dict(), trials=options.trials, seed=options.seed, storage=storage_url(options, run),
        val_fraction=options.val_fraction, cpus_per_trial=options.cpus_per_trial,
        gpus_per_trial=options.gpus_per_trial, max_concurrent=options.max_concurrent,
        time_budget=options.time_budget, wandb=options.wandb, created=time.strftime("%Y-%m-%d %H:%M:%S"))


def check_options(options: SearchOptions) -> None:
    require_at_least("--trials", options.trials, 1)
    require_at_least("--max-epochs", options.max_epochs, 1)
    require_at_least("--max-concurrent", options.max_concurrent, 1)
    require_positive("--cpus-per-trial", options.cpus_per_trial)
    require_at_least("--gpus-per-trial", options.gpus_per_trial, 0)
    require_positive("--time-budget", options.time_budget, fix="e.g. --time-budget 3600, or leave it out for no limit")
    if options.wandb not in ("offline", "online", "off"):
        raise UserError(f"--wandb must be offline, online or off, got '{options.wandb}'", key="--wandb")
    if options.subsample is not None and not 0 < options.subsample <= 1:
        raise UserError(f"--subsample must be in (0, 1], got {options.subsample}", key="--subsample")
    if options.sampler not in ("tpe", "random"):
        raise UserError(f"--sampler must be tpe or random, got '{options.sampler}'", key="--sampler")
    if not 0 < options.val_fraction < 1:
        raise UserError(f"the validation fraction must be in (0, 1), got {options.val_fraction}", key="val_fraction")


def prepare(options: SearchOptions, echo: Callable[[str], None] = print
            ) -> tuple[store.RunDir, SearchSpace, StudySettings, dict]:
    """Everything decided before Ray starts: the space, the study folder, settings and the split."""
    check_options(options)
    spec = load_dataset_spec(options.data)
    dataset = SegmentationDataset(spec)
    study = options.study or Path(str(options.space)).stem
    run = store.RunDir(options.runs_dir, study)
    if run.exists() and not options.resume:
        raise UserError(f"study '{study}' exists in {run.root.parent}", key="--study",
                        fix="pass --resume to continue it, or choose another --study name")
    if options.resume and not run.exists():
        raise UserError(f"no study '{study}' to resume in {run.root.parent}", key="--resume",
                        fix="drop --resume to start it")
    if options.resume:
        settings = run.settings()
        if Path(settings.dataset) != Path(options.data).resolve():
            raise UserError(f"study '{study}' was made on {settings.dataset}", key="--data",
                            fix="resume with the same dataset.yaml")
        space = SearchSpace.from_dict(settings.space)  # the saved space, fidelity and pins, not today's file
        split = store.read_json(run.search_split)
        settings = settings.model_copy(update={"trials": options.trials})
    else:
        stats = label_stats(dataset)  # image sizes and class pixels, read once for the plan, space and split
        plan = plan_data(dataset, stats)
        for note in plan.notes():
            echo(note)
        space = load_space(options.space, median_side(stats), options.fixed, defaults=plan.defaults())
        fidelity = space.fidelity.model_copy(update={k: v for k, v in {
            "max_epochs": options.max_epochs, "subsample": options.subsample}.items() if v is not None})
        space.fidelity = fidelity.model_copy(update={"grace_period": min(fidelity.grace_period,
                                                                          fidelity.max_epochs)})
        run.root.mkdir(parents=True, exist_ok=True)
        settings = resolve_settings(options, run, space, spec.task, plan)
        split = make_search_split(dataset, stats, space.fidelity.subsample, options.val_fraction, options.seed)
        store.write_json(run.search_split, split)
    store.write_yaml(run.settings_file, settings.model_dump())
    prebuild_cache(dataset, space, split)
    return run, space, settings, split


def prebuild_cache(dataset: SegmentationDataset, space: SearchSpace, split: dict) -> None:
    """Decode each image once here, not in every concurrent trial."""
    from automl.data.cache import prebuild

    sizes = space.params["data.resize"].choices if "data.resize" in space.params else [space.fixed.get("data.resize", 256)]
    position = dataset.index_of
    prebuild(dataset, sizes, [position[i] for i in split["train"] + split["val"]])


def recover_interrupted(study, echo) -> int:
    """Trials a killed driver left RUNNING become FAIL (user attr `interrupted`) and are queued again."""
    import optuna

    running = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for trial in running:
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    if running:
        echo(f"{len(running)} trials interrupted by the last driver are marked FAIL and queued again")
    return len(running)


def stop_running_trials(study, reason: str) -> None:
    """Trials the time budget cut short: PRUNED with the scores they reached (not retried on resume)."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "stopped_by", reason)
        study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)


def finished_trials(study) -> list:
    return [t for t in study.get_trials(deepcopy=False)
            if t.state.name in FINISHED and not t.user_attrs.get("interrupted")]


def make_sampler(name: str, seed: int, trials: int):
    """Seeded TPE (multivariate: loss weights act together) that leaves random sampling after a third of a
    small budget, rather than Optuna's fixed 10 startup trials; or plain random search."""
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, max(3, trials // 3)))


def start_ray(options: SearchOptions) -> bool:
    """Start (or join) Ray; returns whether this call started it (and so must stop it)."""
    import ray

    if not options.verbose:  # a failed trial is reported in one line; its traceback is in the trial folder
        for name in ("ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no report home: nothing leaves the machine
    os.environ.setdefault("RAY_enable_metrics_collection", "0")  # fewer background cycles on small machines
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    kwargs = dict(include_dashboard=False, log_to_driver=options.verbose,
                  logging_level=logging.INFO if options.verbose else logging.ERROR)
    if options.address:
        ray.init(address=options.address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)
    return True


def run_search(options: SearchOptions, echo: Callable[[str], None] = print, console=None) -> dict:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    run, space, settings, split = prepare(options, echo)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(settings.storage)
    study = optuna.create_study(study_name=run.study, storage=storage, direction="maximize", load_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([settings.metric])  # optuna-dashboard labels the objective
    study.set_user_attr("dataset", settings.dataset)
    study.set_user_attr("space", space.name)
    recover_interrupted(study, echo)
    done = len(finished_trials(study))
    remaining = options.trials - done
    fidelity = space.fidelity
    echo(f"study '{run.study}': {settings.metric} on {len(split['val'])} held-out images, trials train on "
         f"{len(split['train'])} ({fidelity.subsample:.0%} of the other groups) for up to {fidelity.max_epochs} "
         f"epochs; {done} finished, {max(remaining, 0)} to run")
    if remaining <= 0:
        return {"study": run.study, "ran": 0}
    started_ray = start_ray(options)
    try:
        searcher = truthful_optuna_search(
            fidelity.max_epochs, run.root, space=space.distributions(), metric="score", mode="max",
            sampler=make_sampler(options.sampler, options.seed + len(study.trials), options.trials),
            study_name=run.study, storage=storage)
        scheduler = ASHAScheduler(time_attr="epoch", metric="score", mode="max", max_t=fidelity.max_epochs,
                                  grace_period=fidelity.grace_period, reduction_factor=fidelity.reduction_factor
                                  ) if options.prune else FIFOScheduler()
        context = TrialContext(run.study, str(run.root), settings.dataset, dict(space.fixed), fidelity.max_epochs,
                               tuple(split["train"]), tuple(split["val"]), options.wandb,
                               max(1, int(options.cpus_per_trial)))
        trainable = tune.with_resources(tune.with_parameters(run_trial, context=context),
                                        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
        from automl.progress import SearchProgress

        progress = SearchProgress(remaining, fidelity.max_epochs, list(space.params), run.root, console)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                        max_concurrent_trials=options.max_concurrent,
                                        time_budget_s=options.time_budget, reuse_actors=True),
            run_config=tune.RunConfig(name="ray", storage_path=str(run.root), verbose=0, callbacks=[progress],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        started = time.time()
        with progress:
            tuner.fit()
        if options.time_budget and time.time() - started >= options.time_budget:
            stop_running_trials(study, "time_budget")
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return {"study": run.study, "ran": remaining}
