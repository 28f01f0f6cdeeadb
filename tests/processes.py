"""Kill a driver the way a crash or `kill -9` would, and every process it started.

Ray puts each worker in a process group of its own, so `os.killpg(driver)` leaves the workers running
until they notice the raylet is gone; one of them can still finish a trial or a fold and write it after
the test took its snapshot of "what was done before the kill". The drivers are started with
`start_new_session=True`, and the session is what every process they start keeps (also the ones that
are re-parented to init when their parent dies), so the session is what gets killed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def running_in_session(session: int) -> list[int]:
    """Pids of the processes of `session` that still run (zombies have stopped; only a wait() is missing)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _parent, _group, sid = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):  # exited while we looked
            continue
        if int(sid) == session and state != "Z":
            found.append(int(stat.parent.name))
    return found


def kill_session(leader: int, timeout: float = 30) -> None:
    """SIGKILL every process of the session `leader` started, until none of them runs any more (a
    process that forks while we kill is caught by the next pass)."""
    deadline = time.time() + timeout
    while members := running_in_session(leader):
        assert time.time() < deadline, f"processes {members} still alive {timeout} s after SIGKILL"
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
