"""Keep freed CPU memory in the process for the next batch instead of handing it back to the OS.

glibc returns freed heap memory to the OS once the free top of a heap passes a threshold it raises as it
goes, and serves large blocks by mmap; each training step then allocates the same tensors again on fresh
pages, and every page faults in zeroed. A Tune trial trains in a new thread of a reused worker, where this
costs most (bench/search_overhead.py; one-off readings: 150k-390k page faults per epoch and ~9 % slower
epochs in a reused worker's second trial, ~600 faults with the thresholds fixed). Fixed thresholds keep
blocks below 32 MB in the heap and up to 1 GB of free heap in the process. Linux glibc only; elsewhere
(macOS, musl, Windows) nothing changes.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit: blocks below it come from the heap
TRIM_THRESHOLD = 2**30  # free heap kept for reuse before any is returned

_kept = False


def keep_freed_memory() -> bool:
    """Fix glibc's malloc thresholds for this process (once); returns whether they are set."""
    global _kept
    if _kept or not sys.platform.startswith("linux"):
        return _kept
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    _kept = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept
