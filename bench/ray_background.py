"""What an idle local Ray costs the training epochs of a plain process next to it.

    .venv/bin/python bench/ray_background.py [--rounds 8]

One plain process trains one model epoch by epoch (unet/resnet18, the demo's 52 training images at 128 px,
2 torch threads, as in search_overhead). Each round times one epoch with no Ray on the machine and one
with a local Ray started the way `automl search` starts it (after it has settled for 10 s and one
untimed epoch), in alternating order, so the VM's drift falls on both alike. Prints each round, the ratio
Ray up / Ray down (sums, median and range of the rounds' ratios), and the CPU seconds per minute that Ray's
processes used during the timed epochs. Scope: Ray's daemons, its prestarted idle workers and an idle driver
beside a plain process; not a trial training inside a Ray worker under Tune's driver loop (that is
bench/search_overhead.py).
"""

from __future__ import annotations

import argparse
import contextlib
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
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the training process died; run its code alone to see why")
        return float(line)

    def close(self) -> None:
        self.process.kill()


def proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used) of a process, from /proc (Linux); None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ray_processes(trainer: PlainTrainer) -> dict[int, float]:
    """CPU seconds so far of this process and all it started (Ray's daemons and workers), not the trainer."""
    stats = {int(p.name): proc_stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        if stat and pid != trainer.process.pid:
            children.setdefault(stat[0], []).append(pid)
    family, unseen = [], [os.getpid()]
    while unseen:
        pid = unseen.pop()
        family.append(pid)
        unseen.extend(children.get(pid, []))
    return {pid: stats[pid][1] for pid in family if stats.get(pid)}


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings: the growth of processes seen at both, all of those started between
    (a process that ended between them is lost: Ray's processes live as long as Ray)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    import ray

    from automl.search import SearchOptions, start_ray

    work = Path(tempfile.mkdtemp(prefix="bench-ray-background-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        dataset_yaml = write_demo(work / "data", "multiclass", n=64, size=128)
        from automl.config import load_dataset_spec
        from automl.data.dataset import SegmentationDataset

        ids = list(SegmentationDataset(load_dataset_spec(dataset_yaml)).index_of)
        split_file = work / "split.json"
        split_file.write_text(json.dumps({"train": ids[:52], "val": ids[52:]}))
        trainer = PlainTrainer(dataset_yaml, split_file)
        stack.callback(trainer.close)
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
                before, start = ray_processes(trainer), time.perf_counter()
                up.append(trainer.epoch())
                ray_cpu += cpu_used(before, ray_processes(trainer))
                ray_wall += time.perf_counter() - start
                ray.shutdown(wait_for_processes=True)
            print(f"round {number}: epoch with no Ray {down[-1]:6.2f} s, with an idle local Ray {up[-1]:6.2f} s",
                  flush=True)
        ratios = [u / d for u, d in zip(up, down)]
        print(f"{args.rounds} rounds, one epoch each way: Ray up / Ray down = {sum(up) / sum(down):.3f} (sums); "
              f"the rounds' ratios: median {statistics.median(ratios):.3f}, {min(ratios):.3f} to {max(ratios):.3f}")
        print(f"Ray's processes and its driver used {60 * ray_cpu / ray_wall:.2f} CPU s per minute during the "
              f"timed epochs ({os.cpu_count()} cores: {60 * os.cpu_count()} CPU s per minute in all)")


if __name__ == "__main__":
    main()
