"""trainables.memory: freed blocks stay in the process, so a training step's tensors do not fault in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Eight 8 MB tensors made, touched and freed per step, in a new thread (where a Tune trial trains); prints
# the page faults of steps 3-12, after the allocator has settled.
STEPS = """
import resource, sys, threading, torch
if sys.argv[1] == "keep":
    from trainables.memory import keep_freed_memory
    assert keep_freed_memory()
def steps(out):
    for step in range(12):
        if step == 2:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [torch.empty(2 * 2**20).fill_(1.0) for _ in range(8)]
        del blocks
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
out = []
thread = threading.Thread(target=steps, args=(out,))
thread.start()
thread.join()
print(out[0])
"""


def page_faults(mode: str) -> int:
    return int(subprocess.run([sys.executable, "-c", STEPS, mode], check=True, capture_output=True,
                              text=True).stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds")
def test_freed_memory_is_reused_instead_of_faulting_in_again():
    pages_per_step = 8 * 8 * 2**20 // 4096  # 16384 pages of 4 KB touched per step
    default, kept = page_faults("default"), page_faults("keep")  # glibc 2.36: 14337 and 2048
    assert kept < pages_per_step // 4  # ten steps fault in less than a quarter of one step's pages
    assert default > 4 * kept  # glibc's own thresholds hand memory back and fault it in again


def test_keep_freed_memory_is_set_once_and_reports_it():
    from trainables.memory import keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() == first
    assert first == sys.platform.startswith("linux")
