"""The one place that reaches below Optuna's public API; tests/test_optuna_adapter.py pins what it relies on.

Optuna has no public accessor for a trial's storage id, and heartbeats are recorded by id (its own
`study.optimize` does it internally); our drivers ask and tell trials themselves, so they record them here.
Optuna's stale-trial check skips a RUNNING trial that has no heartbeat row at all, so a driver killed between
`ask` and its first heartbeat leaves a trial that no protocol ever fails: the drivers find those here.
And RDBStorage's constructor always runs its schema-version check, which imports alembic and every SQL
dialect alembic knows (a quarter of a second): readers of a study that exists (`status`, `report`,
`dashboard`) open it without that check.
"""

from __future__ import annotations

from typing import Any


def trial_id(trial: Any) -> int:
    """The storage id of an optuna Trial or FrozenTrial."""
    return trial._trial_id


def record_heartbeat(storage: Any, trial: Any) -> None:
    """Tell a heartbeat-enabled storage that this running trial's driver is alive."""
    storage.record_heartbeat(trial_id(trial))


def running_without_heartbeat(storage: Any, study: Any) -> set[int]:
    """Storage ids of the study's RUNNING trials that never recorded a heartbeat (an RDBStorage's)."""
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    session = storage.scoped_session()
    try:
        rows = (session.query(models.TrialModel.trial_id)
                .outerjoin(models.TrialHeartbeatModel,
                           models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study._study_id,
                        models.TrialModel.state == TrialState.RUNNING,
                        models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
                .all())
    finally:
        session.close()
    return {row[0] for row in rows}


def reader_storage(url: str, engine_kwargs: dict[str, Any]):
    """An RDBStorage for reading and annotating a study that exists: no table creation, no schema-version
    check (no alembic import). Every read and write of studies and trials works as in RDBStorage; schema
    upgrades and version queries do not (readers never use them)."""
    import sqlalchemy
    from optuna.storages import RDBStorage
    from sqlalchemy import orm

    storage = RDBStorage.__new__(RDBStorage)
    storage.__dict__.update(engine_kwargs=engine_kwargs, url=url, skip_compatibility_check=True,
                            heartbeat_interval=None, grace_period=None, heartbeat_stale_trial_callback=None,
                            failed_trial_callback=None, _version_manager=None)
    storage.engine = sqlalchemy.engine.create_engine(url, **engine_kwargs)
    storage.scoped_session = orm.scoped_session(orm.sessionmaker(bind=storage.engine))
    return storage
