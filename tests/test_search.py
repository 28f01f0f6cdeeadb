"""`automl search` on demo data with Ray (2 CPUs): the Optuna storage tells the truth, the best trial learns
and re-trains to its score, seeds repeat, crashes and NaNs are recorded instead of crashing the search."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from automl.config import parse_trial_config
from automl.data.dataset import SegmentationDataset
from automl.data.demo import write_demo
from automl.errors import UserError
from automl.search import SearchOptions, make_sampler, run_search, worker_env
from automl.searcher import StudySearcher
from automl.space import load_space
from automl.store import RunDir
from automl.data.cache import prebuild
from trainables.data import TrainData
from trainables.train import train

MAX_EPOCHS = 6
CHANCE_MIOU = 0.21  # all background: background IoU ~0.85 over 4 classes


def load(root: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{root / 'runs' / study / 'optuna.db'}")


@pytest.fixture(scope="module")
def searched(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("search")
    dataset_yaml = write_demo(root / "data", "multiclass", n=32, size=64)
    options = SearchOptions(space="hybrid_loss", data=dataset_yaml, study="demo", runs_dir=root / "runs", trials=8,
                            max_epochs=MAX_EPOCHS, wandb="off",
                            fixed={"model.encoder": "tu-test_resnet", "train.min_steps_per_epoch": 4})
    lines: list[str] = []
    run_search(options, echo=lines.append)
    return root, options, load(root, "demo"), lines


def test_the_optuna_storage_tells_the_truth(searched):
    root, _, study, _ = searched
    states = [t.state.name for t in study.trials]
    assert len(states) == 8 and set(states) <= {"COMPLETE", "PRUNED"}
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, "ASHA stopped no trial"
    for trial in pruned:  # stopped early, with the scores it had
        assert trial.intermediate_values and max(trial.intermediate_values) < MAX_EPOCHS
        assert trial.user_attrs["epochs"] == max(trial.intermediate_values)
    for trial in study.trials:
        if trial.state.name == "COMPLETE":
            assert sorted(trial.intermediate_values) == list(range(1, MAX_EPOCHS + 1))
            assert trial.value == pytest.approx(max(trial.intermediate_values.values()))
        assert Path(trial.user_attrs["trial_dir"]) == RunDir(root / "runs", "demo").trial_dir(trial.number)
        assert trial.user_attrs["ray_trial_id"] and trial.user_attrs["wall_time_s"] > 0
        assert (Path(trial.user_attrs["trial_dir"]) / "metrics.csv").exists()


def test_best_trial_is_well_above_chance_and_retrains_to_its_score(searched):
    root, options, study, _ = searched
    assert study.best_value > CHANCE_MIOU + 0.25, study.best_value
    trial_dir = Path(study.best_trial.user_attrs["trial_dir"])
    config = parse_trial_config(json.loads((trial_dir / "config.json").read_text()))
    split = json.loads((root / "runs" / "demo" / "search_split.json").read_text())
    dataset = SegmentationDataset.from_yaml(options.data)
    data = TrainData.from_ids(dataset, split["train"], split["val"])
    again = train(config, data)
    assert again.best_score == pytest.approx(study.best_value, abs=0.05)


def test_search_split_holds_out_whole_groups(searched):
    root, _, _, _ = searched
    split = json.loads((root / "runs" / "demo" / "search_split.json").read_text())
    groups = lambda ids: {i.split("/")[-1].split("_")[0] for i in ids}  # noqa: E731 - demo names: g007_0.png
    assert split["val"] and split["train"] and not groups(split["val"]) & groups(split["train"])
    assert len(split["train"]) < 32 - len(split["val"])  # the subsample: half of the training groups


def test_status_prints_the_leaderboard(searched, run_cli):
    root, _, study, _ = searched
    code, out, err = run_cli("status", "demo", "--runs-dir", root / "runs")
    assert code == 0, err
    assert "PRUNED" in out and f"best: trial {study.best_trial.number} mIoU {study.best_value:.4f}" in out


def test_searching_an_existing_study_again_joins_it_and_keeps_every_trial(searched):
    root, options, study, _ = searched
    before = [(t.number, t.state.name, t.value) for t in study.trials]
    lines: list[str] = []
    assert run_search(options, echo=lines.append)["ran"] == 0  # the study already has its 8 trials
    assert [(t.number, t.state.name, t.value) for t in load(root, "demo").trials] == before
    assert any("joining study 'demo'" in line for line in lines)


def test_the_first_trial_is_the_hand_written_default(searched):
    root, _, study, lines = searched
    first = min(study.trials, key=lambda t: t.number)
    expected = {"loss.terms.ce": 0.3, "loss.terms.dice": 0.7, "loss.terms.focal": 0.0, "loss.terms.bce": 0.0,
                "loss.terms.jaccard": 0.0, "optim.lr": 1e-3}
    assert first.params == expected
    assert sum(t.params == expected for t in study.trials) == 1  # then the sampler takes over
    config = json.loads((RunDir(root / "runs", "demo").trial_dir(first.number) / "config.json").read_text())
    assert config["loss"]["terms"] == {"ce": 0.3, "dice": 0.7, "focal": 0.0, "bce": 0.0, "jaccard": 0.0}
    assert config["optim"]["lr"] == 1e-3
    assert any(line.startswith("trial 0 is the defaults: ce 0.3, dice 0.7") for line in lines), lines


def first_configs(seed: int, n: int = 4) -> list[dict]:
    space = load_space("hybrid_loss", median_side=64)
    study = optuna.create_study(sampler=make_sampler("tpe", seed, trials=8), direction="maximize")
    searcher = StudySearcher(study, None, space.distributions(), target=8, max_epochs=MAX_EPOCHS,
                             study_dir=Path("unused"), heartbeat=None)
    return [searcher.suggest(f"trial{i}") for i in range(n)]


def test_the_same_seed_samples_the_same_first_configs():
    assert first_configs(3) == first_configs(3)
    assert first_configs(3) != first_configs(4)


def test_ray_workers_start_with_two_malloc_arenas_unless_the_environment_sets_it(ray_session, monkeypatch):
    """What glibc reads when the process starts (/proc/self/environ), in an actor with a runtime env of its
    own, as Tune starts each trial's worker."""
    @ray_session.remote(num_cpus=0, runtime_env={"env_vars": {"AUTOML_TEST": "1"}})
    class Worker:
        def environment_at_start(self) -> list[bytes]:
            return Path("/proc/self/environ").read_bytes().split(b"\0")

    environment = ray_session.get(Worker.remote().environment_at_start.remote())
    assert b"AUTOML_TEST=1" in environment
    assert b"MALLOC_ARENA_MAX=" + os.environ.get("MALLOC_ARENA_MAX", "2").encode() in environment
    assert worker_env() == ({} if "MALLOC_ARENA_MAX" in os.environ else {"MALLOC_ARENA_MAX": "2"})
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")  # a local Ray's workers inherit it; a cluster's, from `ray start`
    assert worker_env() == {}


def test_crashing_and_non_finite_trials_are_recorded_not_fatal(tmp_path, ray_session):
    dataset_yaml = write_demo(tmp_path / "data", "binary", n=16, size=64)
    # what validation cannot see: a cached image the disk truncated after it was written
    prebuild(SegmentationDataset.from_yaml(dataset_yaml), [48])
    for image in (tmp_path / "data" / ".cache" / "automl" / "48x48").rglob("*.image.npy"):
        image.write_bytes(image.read_bytes()[:200])
    fast = {"model.encoder": "tu-test_resnet", "train.min_steps_per_epoch": 2}
    cases = {"crash": {**fast, "data.resize": 48}, "nan": {**fast, "optim.name": "sgd", "optim.lr": 1e15}}
    for study, fixed in cases.items():
        run_search(SearchOptions(data=dataset_yaml, study=study, runs_dir=tmp_path / "runs", trials=1,
                                 max_epochs=2, wandb="offline", fixed=fixed), echo=lambda line: None)
    crash = load(tmp_path, "crash").trials[0]
    assert crash.state.name == "FAIL" and "ValueError" in crash.user_attrs["error"]
    assert "Traceback" in (Path(crash.user_attrs["trial_dir"]) / "traceback.txt").read_text()
    nan = load(tmp_path, "nan").trials[0]
    assert nan.state.name == "PRUNED" and "non-finite loss" in nan.user_attrs["nonfinite_loss"]
    assert not nan.intermediate_values or np.isfinite(list(nan.intermediate_values.values())).all()
    wandb_runs = list((tmp_path / "runs" / "nan" / "trials" / "0000" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1  # wandb offline by default: one run per trial, in the trial folder


def test_dashboard_serves_the_study_on_localhost_only(searched):
    import shutil
    import socket
    import subprocess
    import sys
    import urllib.request

    root, _, _, _ = searched
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "automl.cli", "dashboard", "demo", "--runs-dir", str(root / "runs"),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body, deadline = None, time.time() + 60
        while body is None and time.time() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2).read().decode()
            except OSError:
                time.sleep(0.5)
        assert body is not None and '"demo"' in body
        if shutil.which("ss"):
            listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
            bound = [line.split()[3] for line in listening.splitlines()[1:]
                     if len(line.split()) > 3 and line.split()[3].endswith(f":{port}")]
            assert bound and all(address == f"127.0.0.1:{port}" for address in bound), bound
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_report_before_promote_says_what_is_missing(searched):
    from reports.html import build_report
    from tests.test_promote import check_report

    root, _, _, _ = searched
    page = check_report(build_report(root / "runs", "demo"))
    assert "No promote run yet: run automl promote." in page and "No ensemble yet" in page
    assert '<section id="loss-weights"><h2>Loss weights</h2><img' in page


def test_status_says_when_no_trial_learned_a_class(tmp_path, searched):
    from types import SimpleNamespace

    from automl.status import unlearned_classes_note

    run = RunDir(tmp_path / "runs", "rare")
    for number, (per_class, steps) in enumerate([([0.97, 0.0, 0.44, 0.0], 75), ([0.96, 0.003, 0.51, 0.2], 50)]):
        run.trial_dir(number).mkdir(parents=True)
        (run.trial_dir(number) / "metrics.csv").write_text(
            f'epoch,score,steps,per_class\n1,0.3,25,"[0.5, 0.0, 0.0, 0.0]"\n3,0.35,{steps},"{per_class}"\n')
    settings = SimpleNamespace(dataset=str(tmp_path / "moved.yaml"))
    note = unlearned_classes_note(run, settings)
    assert note.startswith("no trial learned 1 of 4 classes (class 1) in up to 75 steps"), note
    root, _, _, _ = searched  # the demo's trials learned every class: nothing to say
    demo = RunDir(root / "runs", "demo")
    assert unlearned_classes_note(demo, demo.settings()) is None


def test_a_time_budget_ends_the_search_and_leaves_no_trial_running(tmp_path, ray_session):
    dataset_yaml = write_demo(tmp_path / "data", "binary", n=16, size=64)
    options = SearchOptions(data=dataset_yaml, study="budget", runs_dir=tmp_path / "runs", trials=1000,
                            max_epochs=1000, time_budget=12, prune=False, wandb="off",
                            fixed={"model.encoder": "tu-test_resnet", "train.min_steps_per_epoch": 2})
    started = time.monotonic()
    run_search(options, echo=lambda line: None)
    assert time.monotonic() - started < 12 + 30  # the budget, plus preparing the study and stopping the trials
    trials = load(tmp_path, "budget").trials
    assert trials and all(t.state.name == "PRUNED" for t in trials)  # none reached 1000 epochs, none left RUNNING
    assert all(0 < t.user_attrs["epochs"] < 1000 for t in trials if "epochs" in t.user_attrs)
