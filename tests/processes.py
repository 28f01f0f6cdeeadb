"""Kill a driver the way a crash or `kill -9` would, and every process it started.

Ray puts each worker in a process group of its own, so `os.killpg(driver)` leaves the workers running
until they notice the raylet is gone; one of them can still finish a trial or a fold and write it after
the test took its snapshot of "what was done before the kill"."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def descendants(pid: int) -> list[int]:
    tree, found, todo = children_by_parent(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped running; only its parent's wait() is missing


def kill_process_tree(pid: int, timeout: float = 30) -> None:
    """SIGKILL `pid` and all its descendants, then wait until none of them runs any more."""
    family = [pid, *descendants(pid)]
    for member in family:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout
    while any(alive(member) for member in family):
        assert time.time() < deadline, f"processes still alive {timeout} s after SIGKILL"
        time.sleep(0.1)
