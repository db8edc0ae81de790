"""Let a sampling process reuse the memory it frees instead of returning it to the OS.

Bulk sampling allocates and frees the same large arrays for every block (normal
draws, decoder output, output-scale values: ~40 MB each per 10,000 samples of
~1,000 genes). glibc serves allocations that large with fresh ``mmap`` pages and
unmaps them on free, so each block pays ~30,000 page faults and the zeroing of
every page. Raising glibc's mmap and trim thresholds keeps those arrays in the
heap: one thread sampled and inverse-transformed 10,000 samples in 275 ms instead
of 333 ms, and two threads 60,400 samples/s instead of 55,100 (docs/cohorts.md).
The cost is that the process keeps its peak heap, which a sampling process
reaches with its first blocks anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Allocations below this come from the heap, not from mmap (the largest value glibc
#: accepts on 64-bit systems is larger; it refuses values above its limit).
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (a no-op elsewhere).

    Returns:
        Whether the thresholds were set (False off glibc, e.g. on macOS or musl).
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
