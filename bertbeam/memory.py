"""Giving freed heap memory back to the operating system between CPU batches.

Every batch has its own shape, so the activation buffers torch allocates differ in size from
batch to batch. glibc's malloc keeps freed buffers in its arenas (one per thread that
allocates: each CPU stream's thread has its own) and carves the next, slightly different
buffer from fresh memory, so a worker's resident memory creeps up with the batches it has
run. ``malloc_trim`` returns the free pages; a trim about once a second costs little next
to a second of model time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from collections.abc import Callable

TRIM_INTERVAL_S = 1.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` at most once per ``interval_s``; a no-op without glibc.

    Example::

        trimmer = HeapTrimmer()
        for batch in batches:
            run(batch)
            trimmer.maybe_trim()
    """

    def __init__(self, interval_s: float = TRIM_INTERVAL_S):
        self._interval = interval_s
        self._last = time.monotonic()
        self._trim = _malloc_trim()

    @property
    def available(self) -> bool:
        return self._trim is not None

    def maybe_trim(self) -> bool:
        """Trims if the interval has passed; returns whether it did."""
        now = time.monotonic()
        if self._trim is None or now - self._last < self._interval:
            return False
        self._trim(0)
        self._last = now
        return True
