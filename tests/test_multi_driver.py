"""Several drivers on one study: two `automl search` processes add trials to one study at once (SQLite, and a
real PostgreSQL server), one of them is SIGKILLed mid-trial. The study ends with exactly --trials counted
trials, the killed driver's running trial is found by its missing heartbeat and retried once with the same
parameters, and the living driver fails nothing."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest

from automl.data.demo import write_demo
from automl.study_storage import budget, retried_numbers
from tests.processes import kill_session

TRIALS = 6


def search(dataset_yaml, runs, storage: str | None) -> list[str]:
    return [sys.executable, "-m", "automl.cli", "search", "--space", "hybrid_loss", "--data", str(dataset_yaml),
            "--study", "shared", "--runs-dir", str(runs), "--trials", str(TRIALS), "--max-epochs", "3",
            "--wandb", "off", "--heartbeat", "1", "--no-prune", "--max-concurrent", "1",
            "--set", "model.encoder=tu-test_resnet", "--set", "train.min_steps_per_epoch=3",
            *(["--storage", storage] if storage else [])]


def trials(storage: str) -> list:
    try:
        return optuna.load_study(study_name="shared", storage=storage).get_trials(deepcopy=False)
    except Exception:  # not created yet
        return []


def wait_for(condition, driver: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        assert driver.poll() is None, f"the driver exited with {driver.returncode}"
        time.sleep(0.3)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_drivers_share_one_budget_and_a_killed_one_is_retried(backend, tmp_path, request):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = tmp_path / "runs"
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    if url:  # one database, several tests: a schema-free way to keep them apart is one study name per test
        optuna.delete_study(study_name="shared", storage=url) if trials(url) else None
    storage = url or f"sqlite:///{runs / 'shared' / 'optuna.db'}"
    dataset_yaml = write_demo(tmp_path / "data", "binary", n=16, size=64)
    log = lambda name: open(tmp_path / f"{name}.log", "w")  # noqa: E731
    first = subprocess.Popen(search(dataset_yaml, runs, url), stdout=log("first"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    wait_for(lambda: any(t.state.name == "RUNNING" for t in trials(storage)), first)
    second = subprocess.Popen(search(dataset_yaml, runs, url), stdout=log("second"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    mine = lambda: [t for t in trials(storage) if t.user_attrs.get("driver", "").endswith(f":{second.pid}")]  # noqa: E731
    wait_for(lambda: any(t.state.name == "RUNNING" for t in mine()), second)
    killed = [t.number for t in mine() if t.state.name == "RUNNING"]
    kill_session(second.pid)  # the driver and every Ray process it started, mid-trial
    second.wait()
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]

    final = trials(storage)
    counts = budget(final)
    assert counts.finished == TRIALS and counts.running == counts.waiting == 0, [(t.number, t.state.name) for t in final]
    failed = [t for t in final if t.state.name == "FAIL"]
    assert sorted(t.number for t in failed) == sorted(killed)  # the living driver failed nothing
    assert retried_numbers(final) == set(killed)
    by_number = {t.number: t for t in final}
    for trial in final:
        history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)
        if history:  # the retry: once, with the same parameters, finished by the living driver
            assert len(history) == 1 and trial.params == by_number[history[0]].params
            assert trial.state.name in ("COMPLETE", "PRUNED")
            assert trial.user_attrs["driver"].endswith(f":{first.pid}")
