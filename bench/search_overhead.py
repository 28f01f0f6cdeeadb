"""Overhead of `automl search` (Ray Tune + Optuna) over the same trainings in a plain loop in one process.

    .venv/bin/python bench/search_overhead.py [--trials 6] [--epochs 6]

Two commands, each timed from start to exit as a user would see them:
1. `automl search` runs N trials one at a time (no pruning, fixed epochs, 2 CPUs per trial);
2. a plain Python process imports the same libraries and trains the same N sampled configs with
   trainables.train on the same split, with the same thread count, writing the same run folders
   (config.json, metrics.csv, best.pt) as the trials do: the difference is the orchestration alone.
The data cache is warm for both (the search builds it first and the plain loop reads it).
A shared 2-core VM drifts by +-25 % over minutes, so the commands run in ABBA order (search, plain,
plain, search; the second search samples the same configs with the same seed) and the ratio is
(search 1 + search 2) / (plain 1 + plain 2): a linear drift cancels.
The search pays a fixed start-up the loop does not (Ray starts and stops; the first Ray worker imports
torch and smp again; later trials reuse it): it weighs less the more trials run, so the ratio is given
for N trials. Under the ratio, each kind of run's time is split, from the files its trials wrote, into
before the first trial trains (imports, Ray, the study; up to the first config.json), the training epochs
(metrics.csv `seconds`, summed), the rest between them (building each trial, saving, Tune and Optuna) and
after the last epoch: on a noisy VM this tells the orchestration's fixed cost from a slower or faster
machine. For each command it also prints steal: the share of all the machine's CPU time (idle included) that
the VM's host took away (/proc/stat; n/a off Linux).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from automl.data.demo import write_demo

PLAIN_LOOP = """
import json, sys, torch
from automl.config import parse_trial_config
from automl.data.dataset import SegmentationDataset
from trainables.data import TrainData
from trainables.train import train
dataset_yaml, split_file, out_dir, *config_files = sys.argv[1:]
torch.set_num_threads(2)
split = json.load(open(split_file))
dataset = SegmentationDataset.from_yaml(dataset_yaml)
data = TrainData.from_ids(dataset, split["train"], split["val"])
for number, path in enumerate(config_files):
    train(parse_trial_config(json.load(open(path))), data, out_dir=f"{out_dir}/{number:04d}")
"""


class Run:
    """One command, timed from start to exit, and where its time went, read from the trial folders it wrote."""

    def __init__(self, command: list[str], trials_dir: Path):
        started_at, start, cpu_before = time.time(), time.perf_counter(), cpu_ticks()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.seconds = time.perf_counter() - start
        spent = [after - before for before, after in zip(cpu_before, cpu_ticks())]
        # guest time is already inside user and nice, so the first 8 kinds are all the machine's time
        self.steal = spent[7] / sum(spent[:8]) if len(spent) > 7 and sum(spent[:8]) else None
        folders = sorted(p for p in trials_dir.iterdir() if (p / "metrics.csv").exists())
        self.epochs = sum(epoch_seconds(folder / "metrics.csv") for folder in folders)
        self.start_up = min((folder / "config.json").stat().st_mtime for folder in folders) - started_at
        self.tail = started_at + self.seconds - max((folder / "metrics.csv").stat().st_mtime for folder in folders)
        self.between = self.seconds - self.start_up - self.epochs - self.tail  # trial set-up, saving, Tune/Optuna


def cpu_ticks() -> list[int]:
    """The machine's CPU time by kind (user, nice, system, idle, iowait, irq, softirq, steal, ...), Linux."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return []


def epoch_seconds(metrics_csv: Path) -> float:
    with open(metrics_csv) as rows:
        return sum(float(row["seconds"]) for row in csv.DictReader(rows))


def breakdown(name: str, runs: list[Run]) -> str:
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return (f"{name}: before the first trial trains {mean([r.start_up for r in runs]):5.1f} s, training epochs "
            f"{mean([r.epochs for r in runs]):6.1f} s, between epochs and trials "
            f"{mean([r.between for r in runs]):5.1f} s, after the last epoch {mean([r.tail for r in runs]):4.1f} s; "
            f"steal (CPU time the VM's host took, share of all CPU time, idle included) "
            f"{', '.join('n/a' if r.steal is None else f'{r.steal:.1%}' for r in runs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--encoder", default="resnet18")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    try:
        dataset_yaml = write_demo(work / "data", "multiclass", n=args.n, size=args.size)
        def search(name: str) -> Run:
            return Run([str(Path(sys.executable).with_name("automl")), "search", "--space", "hybrid_loss",
                          "--data", str(dataset_yaml), "--study", name, "--runs-dir", str(work / "runs"),
                          "--trials", str(args.trials), "--max-epochs", str(args.epochs), "--subsample", "1.0",
                          "--no-prune", "--sampler", "random", "--max-concurrent", "1", "--cpus-per-trial", "2",
                          "--wandb", "off", "--set", f"model.encoder={args.encoder}"], work / "runs" / name / "trials")

        searched = [search("overhead")]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name="overhead", storage=f"sqlite:///{work / 'runs/overhead/optuna.db'}")
        configs = [str(Path(t.user_attrs["trial_dir"]) / "config.json") for t in study.trials]
        split_file = work / "runs/overhead/search_split.json"
        plain = [Run([sys.executable, "-c", PLAIN_LOOP, str(dataset_yaml), str(split_file), str(work / f"plain{k}"),
                      *configs], work / f"plain{k}") for k in range(2)]
        searched.append(search("overhead2"))
        n_train = len(json.loads(split_file.read_text())["train"])
        trial_seconds = sum(t.user_attrs["wall_time_s"] for t in study.trials) / len(configs)
        print(f"{len(configs)} trials x {args.epochs} epochs, unet/{args.encoder}, {n_train} training images of "
              f"{args.size}px, about {trial_seconds:.0f} s per trial")
        print(f"automl search (Ray Tune + Optuna), whole command, runs 1 and 4: "
              f"{searched[0].seconds:7.1f} s {searched[1].seconds:7.1f} s")
        print(f"plain loop in one process, whole command, runs 2 and 3:      "
              f"{plain[0].seconds:7.1f} s {plain[1].seconds:7.1f} s")
        print(breakdown("search, mean of 2", searched))
        print(breakdown("plain,  mean of 2", plain))
        ratio = sum(r.seconds for r in searched) / sum(r.seconds for r in plain)
        print(f"ratio search / plain: {ratio:.3f}  (goal <= 1.10)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
