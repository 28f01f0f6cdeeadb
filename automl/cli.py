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
console = Console(soft_wrap=True)  # one check, one line, whatever the terminal width


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
) -> None:
    """Unreadable images, missing labels or images, empty masks, polygons outside the image, unknown
    classes and mask-area outliers: a table and a CSV."""
    from automl.data.audit import audit_dataset

    audit_dataset(dataset, z=z, csv=csv, console=console)


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
