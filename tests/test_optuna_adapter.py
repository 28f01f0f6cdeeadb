"""What the drivers rely on below Optuna's public API (automl/optuna_adapter.py) and how the study-wide
budget counts trials (automl/study_storage.py): pinned here, so an Optuna upgrade that changes them fails
a fast test instead of a multi-day study."""

from __future__ import annotations

import time

import optuna
import pytest

from automl.optuna_adapter import record_heartbeat, running_without_heartbeat, trial_id
from automl.study_storage import SilentTrials, budget, is_surplus, open_storage

X = {"x": optuna.distributions.FloatDistribution(0, 1)}


@pytest.fixture
def study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=1)
    return optuna.create_study(study_name="s", storage=storage, direction="maximize"), storage


def test_the_trial_id_is_the_storage_key_of_the_trial(study):
    study, storage = study
    trial = study.ask(X)
    assert storage.get_trial(trial_id(trial)).number == trial.number


def test_heartbeats_keep_a_trial_alive_and_silence_retries_it_once_with_its_parameters(study):
    study, storage = study
    trial = study.ask(X)
    for _ in range(4):  # 4 s of beats: longer than the 3 s grace period, still alive
        record_heartbeat(storage, trial)
        time.sleep(1)
        optuna.storages.fail_stale_trials(study)
    assert [t.state.name for t in study.trials] == ["RUNNING"]
    time.sleep(3.5)  # silence: the driver died
    optuna.storages.fail_stale_trials(study)
    failed, retry = study.trials
    assert failed.state.name == "FAIL" and retry.state.name == "WAITING" and retry.params == failed.params
    assert budget(study.trials) == budget([retry])  # the retried FAIL does not count
    again = study.ask(X)  # the next ask runs the retry
    assert again.number == retry.number and again.params == failed.params


def test_a_trial_whose_driver_died_before_its_first_heartbeat_is_adopted_then_retried_once(study):
    """Optuna's check never fails a RUNNING trial without a heartbeat row (the driver was killed between
    `ask` and its first beat): SilentTrials gives it one after a grace period, and the protocol takes over."""
    study, storage = study
    orphan, alive = study.ask(X), study.ask(X)
    record_heartbeat(storage, alive)
    assert running_without_heartbeat(storage, study) == {trial_id(orphan)}
    silent = SilentTrials(storage, grace_s=3)
    assert silent.adopt(study) == set()  # first seen now: its owner may be about to beat
    for _ in range(4):
        time.sleep(1)
        record_heartbeat(storage, alive)
        optuna.storages.fail_stale_trials(study)  # Optuna's own check: 4 s > the grace period, still RUNNING
        assert study.trials[orphan.number].state.name == "RUNNING"
    assert silent.adopt(study) == {trial_id(orphan)}  # silent for longer than the grace period
    assert running_without_heartbeat(storage, study) == set()
    time.sleep(4.5)  # the adopted heartbeat goes stale (SQLite times heartbeats to the second)
    record_heartbeat(storage, alive)
    optuna.storages.fail_stale_trials(study)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "RUNNING", "WAITING"]  # the living driver's trial is untouched
    assert study.trials[2].params == orphan.params


def test_a_searcher_waiting_on_a_trial_killed_before_its_first_heartbeat_runs_it_again(study, tmp_path):
    """The CI hang: the budget was full (5 finished + 1 RUNNING without a heartbeat), so the searcher waited
    for a trial no driver would ever finish. It must ask for its retry instead, within a few grace periods."""
    from automl.searcher import StudySearcher  # imports Ray Tune: only here

    study, storage = study
    for _ in range(2):
        study.tell(study.ask(X), 0.5)
    orphan = study.ask(X)
    searcher = StudySearcher(study, storage, X, target=3, max_epochs=1, study_dir=tmp_path, heartbeat=1)
    try:
        deadline, config = time.monotonic() + 20, None
        while config is None and time.monotonic() < deadline:
            config = searcher.suggest("next")
            time.sleep(0.2)
    finally:
        searcher.close()
    assert config is not None and config["x"] == orphan.params["x"]  # the orphan's retry, same parameters
    assert study.trials[orphan.number].state.name == "FAIL"
    assert budget(study.trials).claimed == 3


def test_a_searcher_whose_budget_is_all_claimed_reads_the_storage_once_a_second_not_at_every_step(study, tmp_path):
    """Tune asks for a trial at every step (about 10 a second) while the last trials run: reading every trial
    of the study each time burned 7 % of a core on a 2-trial study, more on big ones and on a shared server."""
    from ray.tune.search import Searcher

    from automl.searcher import FULL_RECHECK_S, StudySearcher

    study, storage = study
    study.tell(study.ask(X), 0.5)
    searcher = StudySearcher(study, storage, X, target=2, max_epochs=1, study_dir=tmp_path, heartbeat=None)
    assert searcher.suggest("mine") is not None  # the last slot, now running
    reads, read_all = [], study.get_trials
    study.get_trials = lambda *args, **kwargs: reads.append(1) or read_all(*args, **kwargs)
    started = time.monotonic()
    answers = [searcher.suggest(f"step{i}") for i in range(200)]
    assert answers == [None] * 200 and 1 <= len(reads) <= 1 + (time.monotonic() - started) / FULL_RECHECK_S
    searcher.quiet_until = time.monotonic() + 3600  # from here on, only a finished trial of its own may read
    searcher.on_trial_complete("mine", {"score": 0.7, "best_score": 0.7, "epoch": 1})
    assert searcher.suggest("after") == Searcher.FINISHED  # at once, not a second later


def test_an_idle_driver_waiting_on_other_drivers_trials_stops_at_its_time_budget(study, tmp_path):
    """Tune checks --time-budget between steps, not while it waits for a trial from a searcher that has none
    to give; there it waits up to 600 s. The searcher keeps the deadline itself."""
    from ray.tune.search import Searcher

    from automl.searcher import StudySearcher

    study, storage = study
    study.ask(X)  # the only slot, held by another driver
    searcher = StudySearcher(study, storage, X, target=1, max_epochs=1, study_dir=tmp_path, heartbeat=None,
                             time_budget=0.5)
    assert searcher.suggest("early") is None
    time.sleep(0.6)
    assert searcher.suggest("late") == Searcher.FINISHED


def test_two_drivers_racing_for_the_last_slot_agree_who_got_it(study):
    study, _ = study
    for _ in range(2):
        study.tell(study.ask(X), 0.5)
    first, second = study.ask(X), study.ask(X)  # both asked when one slot of 3 was left
    assert not is_surplus(study.trials, first.number, target=3)
    assert is_surplus(study.trials, second.number, target=3)


def test_a_reader_storage_reads_and_annotates_what_the_full_storage_wrote(study, tmp_path):
    """The reader skips Optuna's schema check (and its alembic import); trials, values, intermediate
    values, params and user attrs read the same, and a user attr written through it lands."""
    study, _ = study
    trial = study.ask(X)
    trial.report(0.25, 1)
    trial.set_user_attr("epochs", 1)
    study.tell(trial, 0.5)
    study.tell(study.ask(X), state=optuna.trial.TrialState.PRUNED)
    reader = open_storage(f"sqlite:///{tmp_path / 's.db'}", reader=True)
    again = optuna.load_study(study_name="s", storage=reader)
    assert [(t.number, t.state, t.value, t.params, t.intermediate_values, t.user_attrs) for t in again.trials] == \
        [(t.number, t.state, t.value, t.params, t.intermediate_values, t.user_attrs) for t in study.trials]
    again.set_user_attr("seen", True)
    assert study.user_attrs["seen"] is True
    with pytest.raises(KeyError):
        optuna.load_study(study_name="absent", storage=reader)
