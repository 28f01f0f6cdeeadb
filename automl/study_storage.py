"""The Optuna storage of a study and how its trials count against `--trials`, shared by every driver.

Several drivers (processes, machines) may add trials to one study. The storage is the only thing they share,
so the budget is counted there: a trial counts unless it is a FAIL that was retried (a driver died under
it), a surplus trial (two drivers asked for the last slot at once), or a trial the pre-heartbeat recovery
marked `interrupted`. A driver that dies stops sending heartbeats; after the grace period any living driver
marks its trials FAIL and queues each once more with the same parameters (Optuna's heartbeat protocol).
Imports neither Ray nor torch: `status`, `report` and `dashboard` open storages through here.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from automl.errors import UserError

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
HEARTBEAT_S = 10  # seconds between heartbeats of a running trial
GRACE_PERIODS = 3  # heartbeats missed before a trial counts as abandoned
SURPLUS = "surplus"  # user attr of a trial asked for beyond the budget, never run


def open_storage(url: str, heartbeat: int | None = None, reader: bool = False):
    """An RDB storage (SQLite or PostgreSQL). With `heartbeat` seconds, running trials must send heartbeats
    and abandoned ones are failed and retried once, keeping their parameters. A `reader` (status, report,
    dashboard) opens a study that exists and skips the schema check, which costs a quarter of a second."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        if reader:
            from automl.optuna_adapter import reader_storage

            database = url.removeprefix("sqlite:///")
            if url.startswith("sqlite:///") and database != ":memory:" and not Path(database).is_file():
                raise UserError(f"no Optuna storage at {database}", key="storage",
                                fix="check study.yaml's storage, or run `automl search` for this study first")

            return reader_storage(url, engine)
        import optuna
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8; the protocol we use
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            options = {}
            if heartbeat:
                options = dict(heartbeat_interval=int(heartbeat), grace_period=GRACE_PERIODS * int(heartbeat),
                               heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **options)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot open the Optuna storage: {' '.join(str(e).split())[:300]}", key="--storage",
                        fix="check the URL, e.g. sqlite:///runs/study/optuna.db or "
                            "postgresql+psycopg://user:password@host:5432/db") from None


def retried_numbers(trials) -> set[int]:
    """Numbers of trials that failed under a dead driver and were queued again."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        return {number for t in trials for number in (RetryHeartbeatStaleTrialCallback.retry_history(t) or [])}


def counts_toward_budget(trial, retried: set[int]) -> bool:
    if trial.user_attrs.get(SURPLUS) or trial.user_attrs.get("interrupted"):
        return False
    return not (trial.state.name == "FAIL" and trial.number in retried)


@dataclass(frozen=True)
class Budget:
    """Trials of the study that count, by state."""

    finished: int
    running: int
    waiting: int

    @property
    def claimed(self) -> int:
        return self.finished + self.running + self.waiting


def budget(trials) -> Budget:
    retried = retried_numbers(trials)
    counted = [t for t in trials if counts_toward_budget(t, retried)]
    return Budget(finished=sum(t.state.name in FINISHED for t in counted),
                  running=sum(t.state.name == "RUNNING" for t in counted),
                  waiting=sum(t.state.name == "WAITING" for t in counted))


def finished_trials(study) -> list:
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return [t for t in trials if t.state.name in FINISHED and counts_toward_budget(t, retried)]


def is_surplus(trials, number: int, target: int) -> bool:
    """Whether trial `number` is beyond the budget: `target` counted trials have smaller numbers. Two
    drivers racing for the last slot agree on which of them got it."""
    retried = retried_numbers(trials)
    return sum(t.number < number and counts_toward_budget(t, retried) for t in trials) >= target


class SilentTrials:
    """RUNNING trials that never sent a heartbeat: their driver died between asking for them and its first
    beat. Optuna's protocol never fails a trial without heartbeats, so the study would wait for it for ever.
    One silent for a grace period (timed by this driver's own clock: drivers' clocks may differ) gets a
    heartbeat from us; it is then an ordinary abandoned trial, failed and retried once by `fail_stale_trials`
    a grace period later, with the parameters it had been given (a driver killed inside `ask` may have set
    only some; the retry samples the rest). A living owner beats within milliseconds of its `ask`, and its
    beats keep an adopted trial alive; only an `ask` slower than two grace periods loses its trial."""

    def __init__(self, storage, grace_s: float):
        self.storage, self.grace_s = storage, grace_s
        self.first_seen: dict[int, float] = {}

    def adopt(self, study) -> set[int]:
        from automl.optuna_adapter import running_without_heartbeat

        now = time.monotonic()
        silent = running_without_heartbeat(self.storage, study)
        self.first_seen = {storage_id: self.first_seen.get(storage_id, now) for storage_id in silent}
        adopted = {storage_id for storage_id, since in self.first_seen.items() if now - since >= self.grace_s}
        for storage_id in adopted:
            try:
                self.storage.record_heartbeat(storage_id)
            except Exception:  # a storage hiccup: it is still silent at the next check
                pass
        return adopted


class Throttle:
    """True at most once per `seconds` (storage queries from a loop that Ray calls often)."""

    def __init__(self, seconds: float):
        self.seconds, self.last = seconds, float("-inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True
