"""The `automl` command line. Each command is a thin call into one module function."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from automl.errors import UserError

app = typer.Typer(help="Segmentation AutoML: search, promote, ensemble and predict.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Make demo data; inspect and audit a dataset.yaml.", no_args_is_help=True)
app.add_typer(data_app, name="data")
# One check, one line, whatever the terminal width; piped output gets room for the leaderboard's columns.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


class TaskName(str, Enum):
    multiclass = "multiclass"
    multilabel = "multilabel"
    binary = "binary"


@data_app.command("demo")
def data_demo(
    out: Path = typer.Argument(..., help="New folder for the images, labels and dataset.yaml."),
    task: TaskName = typer.Option(TaskName.multiclass, help="multiclass: COCO; multilabel: polygon JSON; "
                                                            "binary: mask PNG."),
    n: int = typer.Option(48, help="Number of images (two per group)."),
    size: int = typer.Option(64, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write a small synthetic dataset that a model can learn, plus its dataset.yaml."""
    from automl.data.demo import write_demo

    path = write_demo(out, task.value, n=n, size=size, seed=seed)
    console.print(f"wrote {n} {task.value} images and {path}")


@data_app.command("inspect")
def data_inspect(dataset: Path = typer.Argument(Path("dataset.yaml"), help="The dataset.yaml.")) -> None:
    """Counts, image sizes, groups, per-class pixel share and presence."""
    from automl.data.summary import inspect_dataset

    inspect_dataset(dataset, console)


@data_app.command("audit")
def data_audit(
    dataset: Path = typer.Argument(Path("dataset.yaml"), help="The dataset.yaml."),
    z: float = typer.Option(3.0, help="Flag a class's mask area when |z-score| exceeds this."),
    csv: Optional[Path] = typer.Option(None, help="Where to write the flags (default: audit.csv beside the "
                                                  "dataset.yaml)."),
    drop: Optional[str] = typer.Option(None, help="Write an exclusion list of the images a rule selects: "
                                                  "'area_z>1.2' (a class's area z-score) or 'oof<0.2' (the "
                                                  "study's out-of-fold score, needs --study)."),
    out: Optional[Path] = typer.Option(None, help="Where --drop writes its list (default: exclude.txt beside "
                                                  "the dataset.yaml)."),
    study: Optional[str] = typer.Option(None, help="The study whose ensemble_per_image.csv an oof rule reads."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where studies live."),
) -> None:
    """Unreadable images, missing labels or images, empty masks, polygons outside the image, unknown
    classes and mask-area outliers: a table and a CSV; with --drop, an exclusion list."""
    from automl.data.audit import audit_dataset

    per_image = runs_dir / study / "ensemble_per_image.csv" if study else None
    audit_dataset(dataset, z=z, csv=csv, console=console, drop=drop, exclude_out=out, per_image_csv=per_image)


@app.command("train")
def train_command(
    config: Path = typer.Option(..., help="TrialConfig as YAML or JSON (model, data, loss, optim, schedule, train)."),
    data: Path = typer.Option(Path("dataset.yaml"), help="The dataset.yaml."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default: runs/train/<time>)."),
    val_fraction: float = typer.Option(0.2, help="Fraction of the groups held out for validation."),
    seed: int = typer.Option(0, help="Seed of the holdout split."),
) -> None:
    """Train one model from a TrialConfig: per-epoch metrics, best checkpoint, metrics.csv."""
    from automl.single import run_single

    run_single(config, data, out, val_fraction, seed, echo=console.print)


@app.command("debug")
def debug_command(
    data: Path = typer.Option(Path("dataset.yaml"), help="The dataset.yaml."),
    arch: str = typer.Option("unet", help="Architecture of the tiny model."),
    encoder: str = typer.Option("tu-test_resnet", help="Encoder of the tiny model."),
    size: int = typer.Option(64, help="Resize side."),
    images: int = typer.Option(8, help="How many images to overfit."),
    epochs: int = typer.Option(12, help="Epochs of the overfit run."),
) -> None:
    """Sanity check before GPU days: augmentations round-trip, a tiny model's loss falls and metric rises."""
    from automl.debug import run_debug

    checks = run_debug(data, arch, encoder, size, images, epochs, echo=console.print)
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


def parse_assignments(pairs: list[str]) -> dict:
    """--set model.encoder=resnet50 --set data.resize=512 -> {"model.encoder": "resnet50", "data.resize": 512}."""
    import yaml

    fixed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"expected KEY=VALUE, got '{pair}'", key="--set", fix="e.g. --set model.encoder=resnet50")
        fixed[key.strip()] = yaml.safe_load(value)
    return fixed


@app.command("search")
def search_command(
    space: str = typer.Option("hybrid_loss", help="A space in search_spaces/ (hybrid_loss, architecture, resize, "
                                                  "augmentation, schedule, full) or a YAML path."),
    data: Path = typer.Option(Path("dataset.yaml"), help="The dataset.yaml."),
    study: Optional[str] = typer.Option(None, help="Study name (default: the space's name)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where studies live."),
    trials: int = typer.Option(20, help="Finished trials wanted."),
    max_epochs: Optional[int] = typer.Option(None, help="Epochs of a trial that is never pruned (ASHA max_t)."),
    subsample: Optional[float] = typer.Option(None, help="Fraction of the training groups each trial sees."),
    max_concurrent: Optional[int] = typer.Option(None, help="Trials running at once (default: as resources allow)."),
    cpus_per_trial: float = typer.Option(1.0, help="CPUs per trial."),
    gpus_per_trial: float = typer.Option(0.0, help="GPUs per trial; fractions share a GPU."),
    time_budget: Optional[float] = typer.Option(
        None, help="Stop this driver after this many seconds (its running trials are recorded PRUNED)."),
    address: Optional[str] = typer.Option(None, help="Join a running Ray cluster (e.g. auto)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default: sqlite in the study folder)."),
    seed: int = typer.Option(0, help="Seed of the sampler and the data split."),
    wandb: str = typer.Option("offline", help="offline | online | off: one wandb run per trial."),
    resume: bool = typer.Option(False, help="Only join a study that exists (a study that exists is always joined: "
                                            "its trials are kept and count toward --trials)."),
    heartbeat: int = typer.Option(10, help="A new study's heartbeat, seconds: a driver silent for 3 heartbeats "
                                           "is dead, and its running trials are retried once."),
    set_: list[str] = typer.Option([], "--set", help="Pin a TrialConfig key: --set model.encoder=resnet50."),
    sampler: str = typer.Option("tpe", help="tpe (seeded, multivariate) or random."),
    prune: bool = typer.Option(True, help="--no-prune runs every trial to --max-epochs (no ASHA)."),
    verbose: bool = typer.Option(False, help="Show Ray's own logs."),
) -> None:
    """Search a space: Ray Tune trials sampled by Optuna TPE and pruned by ASHA, on a group subsample."""
    from automl.search import SearchOptions, run_search
    from automl.status import dashboard_command, leaderboard

    options = SearchOptions(space=space, data=data, study=study, runs_dir=runs_dir, trials=trials,
                            max_epochs=max_epochs, subsample=subsample, max_concurrent=max_concurrent,
                            cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, time_budget=time_budget,
                            address=address, storage=storage, seed=seed, wandb=wandb, resume=resume,
                            fixed=parse_assignments(set_), verbose=verbose, sampler=sampler, prune=prune,
                            heartbeat=heartbeat)
    outcome = run_search(options, echo=console.print, console=console)
    leaderboard(runs_dir, outcome["study"], console)
    console.print(f"review it: {' '.join(dashboard_command(runs_dir, outcome['study']))}   "
                  f"(or: automl dashboard {outcome['study']} --runs-dir {runs_dir})")


@app.command("status")
def status_command(
    study: str = typer.Argument(..., help="The study name."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where studies live."),
) -> None:
    """Leaderboard of a study: rank, score, state, epochs, key params, minutes."""
    from automl.status import leaderboard

    leaderboard(runs_dir, study, console)


@app.command("dashboard")
def dashboard_command_cli(
    study: str = typer.Argument(..., help="The study name."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where studies live."),
    port: int = typer.Option(8080, help="Port on 127.0.0.1."),
) -> None:
    """Serve optuna-dashboard for the study's storage on 127.0.0.1."""
    from automl.status import serve_dashboard

    serve_dashboard(runs_dir, study, port, echo=console.print)


@app.command("promote")
def promote_command(
    study: str = typer.Argument(..., help="The study name."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where studies live."),
    top: int = typer.Option(3, help="How many of the best COMPLETE trials."),
    folds: int = typer.Option(5, help="Folds of the group K-fold (saved with the study, reused)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per fold (default: the search's max_epochs)."),
    trials: Optional[str] = typer.Option(None, help="Promote these trial numbers instead, e.g. 3,7."),
    cpus_per_trial: float = typer.Option(1.0, help="CPUs per fold."),
    gpus_per_trial: float = typer.Option(0.0, help="GPUs per fold; fractions share a GPU."),
    max_concurrent: Optional[int] = typer.Option(None, help="Folds running at once."),
    address: Optional[str] = typer.Option(None, help="Join a running Ray cluster."),
    data: Optional[Path] = typer.Option(None, help="Train on this dataset.yaml instead of the study's (the same "
                                                   "labelled images, e.g. plus automl pseudo's images); its "
                                                   "models are named trialNNNN-<dataset name>."),
) -> None:
    """Train the best trials on full data, every fold of a group K-fold; keep out-of-fold predictions."""
    from automl.promote import PromoteOptions, run_promote

    numbers = None
    if trials:
        try:
            numbers = [int(part) for part in trials.split(",") if part.strip()]
        except ValueError:
            raise UserError(f"expected trial numbers like 3,7, got '{trials}'", key="--trials") from None
    run_promote(PromoteOptions(study=study, runs_dir=runs_dir, top=top, folds=folds, epochs=epochs, trials=numbers,
                               cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                               max_concurrent=max_concurrent, address=address, data=data), echo=console.print)


@app.command("pseudo")
def pseudo_command(
    study: str = typer.Argument(..., help="The study name."),
    images: str = typer.Option(..., help="Unlabelled images: a folder or a glob (e.g. the test images)."),
    out: Path = typer.Option(..., help="A new folder: images/, masks/ and dataset.yaml for the next round."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where studies live."),
    min_confidence: float = typer.Option(0.9, help="A pixel below this winning probability is ignored by the loss."),
    min_confident_fraction: float = typer.Option(0.5, help="An image with fewer sure pixels is left out."),
    tta: str = typer.Option("flip", help="none | flip."),
    checkpoints: str = typer.Option("auto", help="auto | folds | refit, as for predict."),
    batch: int = typer.Option(8, help="Images per batch."),
    tile: Optional[int] = typer.Option(None, help="As predict --tile: resized images larger than this go through "
                                                  "in Gaussian-blended tiles of this side."),
    overlap: float = typer.Option(0.25, help="Overlap of neighbouring tiles, as a fraction of a tile."),
) -> None:
    """Pseudo-label unlabelled images with the study's ensemble: a training-only dataset for the next round."""
    from automl.pseudo import PseudoOptions, run_pseudo

    run_pseudo(PseudoOptions(study=study, images=images, out=out, runs_dir=runs_dir, min_confidence=min_confidence,
                             min_confident_fraction=min_confident_fraction, tta=tta, checkpoints=checkpoints,
                             batch=batch, tile=tile, overlap=overlap), echo=console.print)


@app.command("refit")
def refit_command(
    study: str = typer.Argument(..., help="The study name."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where studies live."),
    models: Optional[str] = typer.Option(None, help="Refit these promoted models (e.g. trial0003,7) instead of "
                                                    "the ensemble's members."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: each model's promote epochs)."),
    cpus_per_trial: float = typer.Option(1.0, help="CPUs per model."),
    gpus_per_trial: float = typer.Option(0.0, help="GPUs per model; fractions share a GPU."),
    max_concurrent: Optional[int] = typer.Option(None, help="Models training at once."),
    address: Optional[str] = typer.Option(None, help="Join a running Ray cluster."),
) -> None:
    """Train each ensemble member once more on every training image; predict then uses those models."""
    from automl.refit import RefitOptions, run_refit

    names = [part.strip() for part in models.split(",") if part.strip()] if models else None
    if models is not None and not names:
        raise UserError("--models names no model", key="--models", fix="e.g. --models trial0003,trial0007")
    run_refit(RefitOptions(study=study, runs_dir=runs_dir, models=names, epochs=epochs, cpus_per_trial=cpus_per_trial,
                           gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent, address=address),
              echo=console.print)


@app.command("ensemble")
def ensemble_command(
    study: str = typer.Argument(..., help="The study name."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where studies live."),
    max_size: int = typer.Option(10, help="At most this many members (with repetition)."),
    bags: int = typer.Option(1, help="Bagged selections on random halves of the models, averaged."),
    seed: int = typer.Option(0, help="Seed of the bagging."),
) -> None:
    """Greedy ensemble selection on the out-of-fold predictions; baselines; the worst images."""
    from automl.ensemble import run_ensemble

    run_ensemble(runs_dir, study, max_size=max_size, bags=bags, seed=seed, echo=console.print)


@app.command("predict")
def predict_command(
    study: str = typer.Argument(..., help="The study name."),
    images: str = typer.Option(..., help="A folder of images or a glob."),
    out: Path = typer.Option(..., help="The submission: a file (rle_csv, coco) or a folder (png, polygon_json)."),
    format: str = typer.Option("rle_csv", help="rle_csv | coco | png | polygon_json."),
    tta: str = typer.Option("none", help="none | flip | flip+scale."),
    scales: str = typer.Option("0.75,1,1.25,1.5", help="Scales of flip+scale."),
    batch: int = typer.Option(8, help="Images per batch."),
    model: Optional[str] = typer.Option(None, help="One promoted model (e.g. trial0003) instead of the ensemble."),
    evaluate: Optional[Path] = typer.Option(None, help="A dataset.yaml whose labels score the predictions."),
    single_polygon: bool = typer.Option(False, help="polygon_json: only the largest polygon per class."),
    rle_order: str = typer.Option("row", help="rle_csv pixel order: row (left-right, then down) or column."),
    tile: Optional[int] = typer.Option(None, help="Predict resized images larger than this in tiles of this "
                                                  "side (Gaussian-blended), e.g. the training crop."),
    overlap: float = typer.Option(0.25, help="Overlap of neighbouring tiles, as a fraction of a tile."),
    checkpoints: str = typer.Option("auto", help="folds: each member's fold models; refit: its model refit on all "
                                                 "images (`automl refit`); auto: refit when every member has one."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where studies live."),
) -> None:
    """Predict with the ensemble's checkpoints and TTA; write a submission."""
    from automl.predict import run_predict

    try:
        scale_values = tuple(float(v) for v in scales.split(",") if v.strip())
    except ValueError:
        raise UserError(f"expected numbers like 0.75,1,1.25, got '{scales}'", key="--scales") from None
    run_predict(runs_dir, study, images, out, format=format, tta=tta, scales=scale_values, batch=batch, model=model,
                evaluate=evaluate, single_polygon=single_polygon, rle_order=rle_order, tile=tile, overlap=overlap,
                checkpoints=checkpoints, echo=console.print)


@app.command("report")
def report_command(
    study: str = typer.Argument(..., help="The study name."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where studies live."),
) -> None:
    """Write the study as a static, self-contained HTML report: runs/<study>/report/index.html."""
    from reports.html import build_report

    path = build_report(runs_dir, study)
    console.print(f"report: {path}")
    console.print(f"dashboard: automl dashboard {study} --runs-dir {runs_dir}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app(args=argv, prog_name="automl")  # standalone: Typer prints usage errors itself and exits 2
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except UserError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
