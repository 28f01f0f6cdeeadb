"""Kill a search driver with SIGKILL mid-way, start it again: finished trials are kept, the trials the kill
cut short are found by their missing heartbeat and retried once, and the count reaches --trials."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest

from automl.data.demo import write_demo
from automl.study_storage import finished_trials, retried_numbers
from tests.processes import kill_session

TRIALS = 6


def finished(storage: str) -> dict[int, tuple[str, float | None]]:
    try:
        study = optuna.load_study(study_name="r", storage=storage)
    except Exception:
        return {}
    return {t.number: (t.state.name, t.value) for t in finished_trials(study)}


def search(dataset_yaml, runs, *extra) -> list[str]:
    return [sys.executable, "-m", "automl.cli", "search", "--space", "hybrid_loss", "--data", str(dataset_yaml),
            "--study", "r", "--runs-dir", str(runs), "--trials", str(TRIALS), "--max-epochs", "3", "--wandb", "off",
            "--heartbeat", "1", "--set", "model.encoder=tu-test_resnet", "--set", "train.min_steps_per_epoch=2", *extra]


def test_resume_after_sigkill_keeps_finished_trials_and_reaches_the_count(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dataset_yaml = write_demo(tmp_path / "data", "binary", n=16, size=64)
    runs = tmp_path / "runs"
    storage = f"sqlite:///{runs / 'r' / 'optuna.db'}"
    driver = subprocess.Popen(search(dataset_yaml, runs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 300
    while len(finished(storage)) < 2 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.5)
    kill_session(driver.pid)  # the driver and every Ray process it started
    driver.wait()
    before = finished(storage)
    assert 2 <= len(before) < TRIALS, before

    log = tmp_path / "resumed.log"
    with open(log, "w") as out:
        resumed = subprocess.Popen(search(dataset_yaml, runs), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = resumed.wait(timeout=600)
        except subprocess.TimeoutExpired:  # say where it stood, so that a hang can be told from slowness
            kill_session(resumed.pid)
            resumed.wait()
            pytest.fail(f"the resumed search ran 600 s; trials {finished(storage)}; it printed:\n{log.read_text()[-4000:]}")
    output = log.read_text()
    assert code == 0, output[-4000:]
    after = finished(storage)
    assert len(after) == TRIALS
    assert all(after[number] == state for number, state in before.items())  # nothing earlier was lost
    study = optuna.load_study(study_name="r", storage=storage)
    cut_short = {t.number for t in study.trials if t.state.name == "FAIL"}
    assert cut_short and cut_short == retried_numbers(study.trials)  # each ran again, once
    by_number = {t.number: t for t in study.trials}
    for trial in study.trials:
        history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)
        if history:
            # the parameters the dead trial had been given (a kill inside `ask` leaves only some of them)
            assert len(history) == 1 and by_number[history[0]].params.items() <= trial.params.items()
    assert "joining study 'r'" in output and "finished" in output
