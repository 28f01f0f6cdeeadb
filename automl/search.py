"""`automl search`, the driver: Ray Tune trials sampled by Optuna (seeded TPE) and pruned by ASHA, on a group
subsample. What runs in a trial is search_trial; the searcher is searcher.StudySearcher; the storage and
the study-wide budget are study_storage. Starting a driver on a study that exists joins it: any number of
drivers, on any machines that share the run directory and the storage, add trials until the study has
`--trials` finished ones in all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from automl import store
from automl.config import StudySettings, load_dataset_spec
from automl.data.dataset import SegmentationDataset
from automl.data.splits import group_subsample, holdout, labelled_strata
from automl.data.stats import LabelStats, label_stats
from automl.display import format_value, short
from automl.errors import UserError, require_at_least, require_positive
from automl.metrics import METRIC_NAME
from automl.plan import DataPlan, plan_data
from automl.pseudo import holdout_note
from automl.space import SearchSpace, load_space
from automl.study_storage import HEARTBEAT_S, budget, open_storage



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
    heartbeat: int = HEARTBEAT_S  # a new study's heartbeat interval, seconds (joining drivers use the study's)


# ---------------------------------------------------------------- the driver

def storage_url(options: SearchOptions, run: store.RunDir) -> str:
    return options.storage or f"sqlite:///{run.optuna_db}"


def median_side(stats: LabelStats) -> int:
    return int(np.median(stats.sizes.max(axis=1)))


def make_search_split(dataset: SegmentationDataset, stats: LabelStats, subsample: float, val_fraction: float,
                      seed: int) -> dict:
    """One fixed validation holdout (so scores compare) and a seeded group subsample of the rest."""
    sample_strata = labelled_strata(stats.pixels, dataset.spec.task, dataset.training_only)
    is_val = holdout(dataset.groups, sample_strata, val_fraction, seed, dataset.training_only)
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
        time_budget=options.time_budget, wandb=options.wandb, created=time.strftime("%Y-%m-%d %H:%M:%S"),
        heartbeat=options.heartbeat)


def check_options(options: SearchOptions) -> None:
    require_at_least("--trials", options.trials, 1)
    require_at_least("--heartbeat", options.heartbeat, 1)
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
    if options.resume and not run.exists():
        raise UserError(f"no study '{study}' to resume in {run.root.parent}", key="--resume",
                        fix="drop --resume to start it")
    created_runs_dir = not run.root.parent.exists()
    if claim_new_study(run):
        try:
            stats = label_stats(dataset)  # image sizes and class pixels, read once for the plan, space and split
            labelled = stats.subset(np.flatnonzero(~dataset.training_only))  # pseudo-labels decide nothing
            plan = plan_data(dataset, labelled)
            for note in [*plan.notes(), holdout_note(dataset)]:
                if note:
                    echo(note)
            space = load_space(options.space, median_side(labelled), options.fixed, defaults=plan.defaults())
            fidelity = space.fidelity.model_copy(update={k: v for k, v in {
                "max_epochs": options.max_epochs, "subsample": options.subsample}.items() if v is not None})
            space.fidelity = fidelity.model_copy(update={"grace_period": min(fidelity.grace_period,
                                                                              fidelity.max_epochs)})
            settings = resolve_settings(options, run, space, spec.task, plan)
            split = make_search_split(dataset, stats, space.fidelity.subsample, options.val_fraction, options.seed)
            store.write_json(run.search_split, split)
            store.write_yaml(run.settings_file, settings.model_dump())  # last: its presence means "ready"
        except BaseException:  # a refused space or dataset leaves nothing behind for a later driver to join
            shutil.rmtree(run.root, ignore_errors=True)
            if created_runs_dir and not any(run.root.parent.iterdir()):
                run.root.parent.rmdir()
            raise
    else:
        settings = wait_for_settings(run)
        if Path(settings.dataset) != Path(options.data).resolve():
            raise UserError(f"study '{study}' was made on {settings.dataset}", key="--data",
                            fix="join it with the same dataset.yaml, or choose another --study name")
        space = SearchSpace.from_dict(settings.space)  # the saved space, fidelity and pins, not today's file
        split = store.read_json(run.search_split)
        settings = settings.model_copy(update={"trials": options.trials})
        echo(f"joining study '{study}' (its space, split and fidelity; --trials {options.trials} in all)")
    prebuild_cache(dataset, space, split)
    return run, space, settings, split


def claim_new_study(run: store.RunDir) -> bool:
    """Create the study folder; False when it exists (another driver made it, now or earlier)."""
    run.root.parent.mkdir(parents=True, exist_ok=True)
    try:
        run.root.mkdir()
    except FileExistsError:
        return False
    return True


def wait_for_settings(run: store.RunDir, timeout: float = 600.0) -> StudySettings:
    """The study's settings, waiting for a driver that is creating the study right now."""
    deadline = time.monotonic() + timeout
    while not run.settings_file.exists():
        if time.monotonic() > deadline:
            raise UserError(f"{run.root} exists but has no {run.settings_file.name}", file=run.root,
                            fix="remove the folder if no driver is creating it, then run the search again")
        time.sleep(0.5)
    return run.settings()


def prebuild_cache(dataset: SegmentationDataset, space: SearchSpace, split: dict) -> None:
    """Decode each image once here, not in every concurrent trial."""
    from automl.data.cache import prebuild

    sizes = space.params["data.resize"].choices if "data.resize" in space.params else [space.fixed.get("data.resize", 256)]
    position = dataset.index_of
    prebuild(dataset, sizes, [position[i] for i in split["train"] + split["val"]])


def make_sampler(name: str, seed: int, trials: int):
    """Seeded TPE (multivariate: loss weights act together) that leaves random sampling after a third of a
    small budget, rather than Optuna's fixed 10 startup trials; or plain random search."""
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, max(3, trials // 3)))


def enqueue_defaults(study, space: SearchSpace, echo: Callable[[str], None]) -> None:
    """A new study's first trial is the config a user writes by hand, so what the search ranks first has
    been compared with it (FLAML and AutoGluon start from a default config too)."""
    point = space.default_point()
    if point:
        study.enqueue_trial(point, skip_if_exists=True)
        echo(f"trial 0 is the defaults: {', '.join(f'{short(k)} {format_value(v)}' for k, v in point.items())}")


def start_ray(options: SearchOptions, num_cpus: int | None = None) -> bool:
    """Start (or join) Ray; returns whether this call started it (and so must stop it). A Ray started here
    has `num_cpus` (default: the machine's)."""
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
                  logging_level=logging.INFO if options.verbose else logging.ERROR,
                  runtime_env={"env_vars": env} if (env := worker_env()) else None)
    if options.address:  # a cluster keeps the worker niceness it was started with
        ray.init(address=options.address, **kwargs)
    else:
        with normal_priority_workers():
            ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
    return True


def worker_env() -> dict[str, str]:
    """What this job's Ray workers get in their environment, on this machine or a cluster. Ray trains trial
    after trial in one worker, each in a new thread; with glibc's default of up to 8 malloc arenas per core,
    the memory the worker kept but no longer used grew with every trial (one-off, six unet/resnet18 trials at
    128 px, at the trials' starts: RSS 0.8 to 3.1 GB, 0.2 GB of it in use, the rest free in the arenas).
    Capped at two arenas, as many long-running servers do: 1.8-2.0 GB. A MALLOC_ARENA_MAX already set is
    left alone (a local Ray's workers inherit it, a cluster's get the one `ray start` or `ray job submit`
    gave them; passing it again would clash with a job's own runtime env)."""
    return {} if "MALLOC_ARENA_MAX" in os.environ else {"MALLOC_ARENA_MAX": "2"}


@contextlib.contextmanager
def normal_priority_workers():
    """Ray starts its workers at nice 15 so its own processes come first; on a small machine every blip of
    theirs then stops a trial's training threads (bench/search_overhead.py). The Ray started here passes
    nice 0 to its workers; the setting is not left behind for later clusters or subprocesses."""
    if "RAY_worker_niceness" in os.environ:  # the user's own choice stands
        yield
        return
    os.environ["RAY_worker_niceness"] = "0"
    try:
        yield
    finally:
        os.environ.pop("RAY_worker_niceness", None)


def run_search(options: SearchOptions, echo: Callable[[str], None] = print, console=None) -> dict:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from automl.progress import SearchProgress
    from automl.search_trial import TrialContext, run_trial
    from automl.searcher import StudySearcher

    run, space, settings, split = prepare(options, echo)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(settings.storage, heartbeat=settings.heartbeat)
    created = optuna.create_study(study_name=run.study, storage=storage, direction="maximize", load_if_exists=True)
    trials_so_far = len(created.get_trials(deepcopy=False))
    # seeded by the study's size, so a second driver does not sample the first one's configs again
    study = optuna.load_study(study_name=run.study, storage=storage,
                              sampler=make_sampler(options.sampler, options.seed + trials_so_far, options.trials))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([settings.metric])  # optuna-dashboard labels the objective
        optuna.storages.fail_stale_trials(study)  # trials of drivers that died: FAIL, queued once more
    study.set_user_attr("dataset", settings.dataset)
    study.set_user_attr("space", space.name)
    if trials_so_far == 0:
        enqueue_defaults(study, space, echo)
    counts = budget(study.get_trials(deepcopy=False))
    remaining = options.trials - counts.finished
    fidelity = space.fidelity
    echo(f"study '{run.study}': {settings.metric} on {len(split['val'])} held-out images, trials train on "
         f"{len(split['train'])} ({fidelity.subsample:.0%} of the other groups) for up to {fidelity.max_epochs} "
         f"epochs; {counts.finished} finished, {counts.running} running elsewhere, {max(remaining, 0)} to go")
    if remaining <= 0:
        return {"study": run.study, "ran": 0}
    started_ray = start_ray(options)
    searcher = StudySearcher(study, storage, space.distributions(), options.trials, fidelity.max_epochs, run.root,
                             heartbeat=settings.heartbeat, time_budget=options.time_budget)
    try:
        scheduler = ASHAScheduler(time_attr="epoch", metric="score", mode="max", max_t=fidelity.max_epochs,
                                  grace_period=fidelity.grace_period, reduction_factor=fidelity.reduction_factor
                                  ) if options.prune else FIFOScheduler()
        context = TrialContext(run.study, str(run.root), settings.dataset, dict(space.fixed), fidelity.max_epochs,
                               tuple(split["train"]), tuple(split["val"]), options.wandb,
                               max(1, int(options.cpus_per_trial)))
        trainable = tune.with_resources(tune.with_parameters(run_trial, context=context),
                                        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
        progress = SearchProgress(remaining, fidelity.max_epochs, list(space.params), run.root, console)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                        max_concurrent_trials=options.max_concurrent,
                                        time_budget_s=options.time_budget, reuse_actors=True),
            run_config=tune.RunConfig(name=f"ray-{os.getpid()}", storage_path=str(run.root), verbose=0,
                                      callbacks=[progress], failure_config=tune.FailureConfig(max_failures=0)),
        )
        with progress:
            tuner.fit()
        searcher.stop_running("time_budget")  # only trials the time budget cut short are still open
    finally:
        searcher.close()
        if started_ray:
            import ray

            ray.shutdown()
    return {"study": run.study, "ran": remaining}
