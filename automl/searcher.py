"""A Ray Tune searcher that asks and tells an Optuna study itself, on Ray's public Searcher API.

Every finished trial is told as what it was: COMPLETE with its best score, PRUNED (ASHA stopped it, its
loss went non-finite, or the time budget cut it) with its intermediate values, FAIL with the error. The
budget is the study's, counted in the storage (study_storage), so several drivers on one study stop
together at `--trials`; each driver sends heartbeats for its own running trials and, now and then, fails
and requeues the trials of drivers that stopped sending theirs.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from pathlib import Path

import optuna
from ray.tune.search import Searcher

from automl import optuna_adapter
from automl.search_trial import TRIAL_NUMBER, final_state
from automl.study_storage import GRACE_PERIODS, HEARTBEAT_S, SURPLUS, SilentTrials, Throttle, budget, is_surplus

FULL_RECHECK_S = 1.0  # how often a driver whose budget is all claimed looks for a trial to take over


class Heartbeats:
    """A daemon thread recording a heartbeat for each running trial of this driver every `interval` s."""

    def __init__(self, storage, interval: float):
        self.storage, self.interval = storage, interval
        self.trials: dict[str, optuna.trial.Trial] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="optuna-heartbeats", daemon=True)
        self.thread.start()

    def add(self, key: str, trial: optuna.trial.Trial) -> None:
        try:
            optuna_adapter.record_heartbeat(self.storage, trial)
        except Exception:  # a storage hiccup: the loop beats again, the grace period covers it
            pass
        with self.lock:
            self.trials[key] = trial

    def remove(self, key: str) -> None:
        with self.lock:
            self.trials.pop(key, None)

    def loop(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                running = list(self.trials.values())
            for trial in running:
                try:
                    optuna_adapter.record_heartbeat(self.storage, trial)
                except Exception:  # a storage hiccup: the next beat retries, the grace period covers it
                    pass

    def stop(self) -> None:
        self.stopped.set()


class StudySearcher(Searcher):
    def __init__(self, study: optuna.Study, storage, distributions: dict, target: int, max_epochs: int,
                 study_dir: Path, heartbeat: float | None, time_budget: float | None = None,
                 metric: str = "score", mode: str = "max"):
        super().__init__(metric=metric, mode=mode)
        self.study, self.distributions, self.target = study, distributions, target
        self.max_epochs, self.study_dir = max_epochs, Path(study_dir)
        self.trials: dict[str, optuna.trial.Trial] = {}  # Ray trial id -> this driver's Optuna trial
        self.reported: dict[str, set[int]] = {}
        self.heartbeats = Heartbeats(storage, heartbeat) if heartbeat else None
        self.silent = SilentTrials(storage, GRACE_PERIODS * heartbeat) if heartbeat else None
        self.check_stale = Throttle(heartbeat or HEARTBEAT_S)
        self.quiet_until = 0.0  # budget all claimed: Tune still asks every step (~10/s), the storage once a second
        # Tune checks its time budget between steps, but not while it waits on a searcher that has nothing to
        # give (this driver idle, other drivers holding the last slots): it would overrun by up to 600 s
        self.deadline = time.monotonic() + time_budget if time_budget else None
        self.driver = f"{socket.gethostname()}:{os.getpid()}"

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space comes from the study's SearchSpace, not from Tune's param_space

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return Searcher.FINISHED
        if self.heartbeats and self.check_stale():
            self.recover_abandoned()
        if time.monotonic() < self.quiet_until:
            return None  # nothing to start until a trial finishes or dies: no full read of the storage per step
        counts = budget(self.study.get_trials(deepcopy=False))
        if counts.finished >= self.target:
            return Searcher.FINISHED
        if counts.claimed >= self.target and counts.waiting == 0:
            self.quiet_until = time.monotonic() + FULL_RECHECK_S
            return None  # other trials are running; one may yet die and be queued again
        try:
            with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize(); we send them
                warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
                trial = self.study.ask(self.distributions)
            if self.heartbeats:  # at once: a trial killed before its first beat waits for SilentTrials
                self.heartbeats.add(trial_id, trial)
            return self.claim(trial_id, trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # an ask so slow that another driver took it for dead
            self.forget(trial_id)
            return None
        except Exception:
            self.forget(trial_id)
            raise

    def claim(self, trial_id: str, trial: optuna.trial.Trial) -> dict | None:
        if is_surplus(self.study.get_trials(deepcopy=False), trial.number, self.target):
            trial.set_user_attr(SURPLUS, True)  # another driver took the last slot at the same moment
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.forget(trial_id)
            return None
        trial.set_user_attr("driver", self.driver)
        self.trials[trial_id] = trial
        return {**{name: trial.params[name] for name in self.distributions}, TRIAL_NUMBER: trial.number}

    def recover_abandoned(self) -> None:
        """Dead drivers' trials: FAIL, and queued once more (with the parameters they had been given)."""
        try:
            with warnings.catch_warnings():  # experimental since Optuna 2.9, and the protocol we rely on
                warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
                self.silent.adopt(self.study)  # trials a driver died under before their first heartbeat
                optuna.storages.fail_stale_trials(self.study)
        except Exception:  # a storage hiccup in housekeeping must not stop the search: the next check retries
            pass

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.trials and "epoch" in result and not result.get("nonfinite"):
            self.report(trial_id, result)

    def report(self, trial_id: str, result: dict) -> None:
        trial, step = self.trials[trial_id], int(result["epoch"])
        if step not in self.reported.setdefault(trial_id, set()):
            trial.report(float(result[self.metric]), step)
            self.reported[trial_id].add(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self.trials.get(trial_id)
        if trial is None:
            return
        result = result or {}
        if "epoch" in result and not result.get("nonfinite"):
            self.report(trial_id, result)  # Tune skips on_trial_result for the result that stopped it
        self.record(trial, trial_id, result)
        state = final_state(result, error, self.max_epochs)
        if state == "COMPLETE":
            self.study.tell(trial, float(result.get("best_score", result[self.metric])))
        else:
            self.study.tell(trial, state=getattr(optuna.trial.TrialState, state))
        self.forget(trial_id)
        self.quiet_until = 0.0  # the study may be done now: the next suggest reads the storage at once

    def record(self, trial: optuna.trial.Trial, trial_id: str, result: dict) -> None:
        trial_dir = self.study_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("trial_dir", str(trial_dir))
        trial.set_user_attr("ray_trial_id", trial_id)
        trial.set_user_attr("epochs", int(result.get("epoch", 0)))
        trial.set_user_attr("wall_time_s", float(result.get("time_total_s", 0.0)))
        if result.get("node_id"):
            trial.set_user_attr("node_id", result["node_id"])
        error_file = trial_dir / "error.txt"
        if error_file.exists():
            trial.set_user_attr("nonfinite_loss" if result.get("nonfinite") else "error",
                                error_file.read_text().strip())

    def forget(self, trial_id: str) -> None:
        self.trials.pop(trial_id, None)
        self.reported.pop(trial_id, None)
        if self.heartbeats:
            self.heartbeats.remove(trial_id)

    def stop_running(self, reason: str) -> None:
        """This driver's trials still running (the time budget ran out): PRUNED with what they reached."""
        for trial_id, trial in list(self.trials.items()):
            trial.set_user_attr("stopped_by", reason)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self.forget(trial_id)

    def close(self) -> None:
        if self.heartbeats:
            self.heartbeats.stop()

    def __getstate__(self) -> dict:
        """Ray pickles the Tuner's config (tuner.pkl); the live study, threads and trials stay behind (the
        Optuna storage is the state: a new driver joins the study instead of restoring this object)."""
        live = ("study", "heartbeats", "silent", "trials", "reported")
        return {key: value for key, value in self.__dict__.items() if key not in live}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the Optuna storage is the searcher's state."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: the Optuna storage is the searcher's state."""
