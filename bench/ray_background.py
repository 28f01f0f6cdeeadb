"""What an idle local Ray costs the training epochs next to it (part of bench/search_overhead.py's excess).

    .venv/bin/python bench/ray_background.py [--rounds 8]

One plain process trains one model epoch by epoch (unet/resnet18, the demo's 52 training images at 128 px,
2 torch threads, as in search_overhead). Each round times one epoch with no Ray on the machine and one
with a local Ray started the way `automl search` starts it (after it has settled for 10 s and one
untimed epoch), in alternating order, so the VM's drift falls on both alike. Prints each round, the ratio
Ray up / Ray down (sum and median of the rounds' ratios), and the CPU seconds per minute that Ray's own
processes (Ray's daemons and the driver, which here only holds Ray open) used during the timed epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from automl.data.demo import write_demo

PLAIN_EPOCHS = """
import json, sys, torch
from automl.config import TrialConfig, load_dataset_spec
from automl.data.dataset import SegmentationDataset
from automl.space import unflatten
from trainables.data import TrainData
from trainables.train import training_epochs
torch.set_num_threads(2)
split = json.load(open(sys.argv[2]))
data = TrainData.from_ids(SegmentationDataset(load_dataset_spec(sys.argv[1])), split["train"], split["val"])
config = TrialConfig(**unflatten({"model.encoder": "resnet18", "data.resize": 128, "train.epochs": 1000}))
epochs = training_epochs(config, data)
print("ready", flush=True)
for _ in sys.stdin:
    print(next(epochs).metrics["seconds"], flush=True)
"""


class PlainTrainer:
    """A separate process that trains one more epoch each time it is asked."""

    def __init__(self, dataset_yaml: Path, split_file: Path):
        self.process = subprocess.Popen([sys.executable, "-c", PLAIN_EPOCHS, str(dataset_yaml), str(split_file)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the training process did not start")

    def epoch(self) -> float:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.kill()


def proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used) of a process, from /proc (Linux); None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ray_processes(trainer: PlainTrainer) -> list[int]:
    """This process and all it started (Ray's daemons and workers), but not the training process."""
    stats = {int(p.name): proc_stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    parents = {pid: stat[0] for pid, stat in stats.items() if stat}
    family, grown = {os.getpid()}, True
    while grown:
        grown = False
        for pid, parent in parents.items():
            if parent in family and pid not in family and pid != trainer.process.pid:
                family.add(pid)
                grown = True
    return sorted(family)


def cpu_seconds(pids: list[int]) -> float:
    return sum(stat[1] for pid in pids if (stat := proc_stat(pid)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    import ray

    from automl.search import SearchOptions, start_ray

    work = Path(tempfile.mkdtemp(prefix="bench-ray-background-"))
    try:
        dataset_yaml = write_demo(work / "data", "multiclass", n=64, size=128)
        from automl.config import load_dataset_spec
        from automl.data.dataset import SegmentationDataset

        ids = list(SegmentationDataset(load_dataset_spec(dataset_yaml)).index_of)
        split_file = work / "split.json"
        split_file.write_text(json.dumps({"train": ids[:52], "val": ids[52:]}))
        trainer = PlainTrainer(dataset_yaml, split_file)
        trainer.epoch()  # the first epoch decodes the images
        down, up, ray_cpu, ray_wall = [], [], 0.0, 0.0
        for number in range(args.rounds):
            for state in ("down", "up") if number % 2 == 0 else ("up", "down"):
                if state == "down":
                    trainer.epoch()
                    down.append(trainer.epoch())
                    continue
                start_ray(SearchOptions())
                time.sleep(10)
                trainer.epoch()
                processes = ray_processes(trainer)
                before, start = cpu_seconds(processes), time.perf_counter()
                up.append(trainer.epoch())
                ray_cpu += cpu_seconds(processes) - before
                ray_wall += time.perf_counter() - start
                ray.shutdown()
            print(f"round {number}: epoch with no Ray {down[-1]:6.2f} s, with an idle local Ray {up[-1]:6.2f} s",
                  flush=True)
        print(f"{args.rounds} rounds, one epoch each way: Ray up / Ray down = {sum(up) / sum(down):.3f} (sums), "
              f"{statistics.median(u / d for u, d in zip(up, down)):.3f} (median of the rounds' ratios)")
        print(f"Ray's processes and its driver used {60 * ray_cpu / ray_wall:.2f} CPU s per minute during the "
              f"timed epochs (2 cores: 120 CPU s per minute in all)")
        trainer.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
