"""The one place that reaches below Optuna's public API; tests/test_optuna_adapter.py pins what it relies on.

Optuna has no public accessor for a trial's storage id, and heartbeats are recorded by id (its own
`study.optimize` does it internally); our drivers ask and tell trials themselves, so they record them here.
"""

from __future__ import annotations

from typing import Any


def trial_id(trial: Any) -> int:
    """The storage id of an optuna Trial or FrozenTrial."""
    return trial._trial_id


def record_heartbeat(storage: Any, trial: Any) -> None:
    """Tell a heartbeat-enabled storage that this running trial's driver is alive."""
    storage.record_heartbeat(trial_id(trial))
