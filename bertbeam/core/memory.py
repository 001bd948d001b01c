"""A worker's heap over a long run: allocator settings that keep its arenas from
fragmenting, and freed memory given back to the operating system between CPU batches.

Every batch has its own shape, so the activation buffers torch allocates differ in size from
batch to batch. glibc's malloc keeps freed buffers in its arenas (one per thread that
allocates: each CPU stream's thread has its own) and carves the next, slightly different
buffer from fresh memory, so a worker's resident memory creeps up with the batches it has
run. ``malloc_trim`` returns the free pages; a trim about once a second costs little next
to a second of model time.

Trimming gives the pages back, but not the address space: batch after batch, buffers of new
sizes are carved above chunks that are still held, and the arenas grow (on the 2-core
machine, all-MiniLM-L6-v2: 450 MiB of arenas after 2,400 documents, 2.2 GiB after 38,400, with
~290 MiB in use throughout), and so does the memory each batch touches before the next trim:
peak RSS rose with the corpus. :func:`prepare_allocator` stops that at its source: buffers of
1 MiB and more are mapped and unmapped on their own (a fixed mmap threshold), so they never
fragment an arena, and torch backs its large buffers with transparent huge pages, which
makes the fresh mappings cheap (3% slower than glibc's defaults in the same run, against 12%
without huge pages; arenas flat at ~210 MiB, peak RSS 964 instead of 1,239 MiB on 9,600
documents).

Python's own cyclic garbage collector is the other cost of a heap this size. Importing
Beam, torch and transformers leaves ~600,000 long-lived objects, and every full collection
walks them all: on the 2-core machine a quarter of the import time went to collections
(10.0 s vs 7.2 s with the collector off), and the interpreter's teardown, which collects
again after every module it clears, took 2.4 s after the last result was written.
:func:`collector_paused` keeps the collector off while a phase imports libraries or loads a
model and then freezes what it left (``gc.freeze``: out of every later collection's walk);
:func:`freeze_live_objects` does the same for what a command leaves at its end.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

TRIM_INTERVAL_S = 1.0


MMAP_THRESHOLD = 1 << 20
"""Heap buffers of this many bytes and more get mappings of their own (see the module doc)."""
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


@functools.cache
def _libc_function(name: str) -> Callable[..., int] | None:
    """A glibc function, or ``None`` where the C library lacks it (macOS, musl)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    return _libc_function("malloc_trim")


def huge_pages_available(setting: str = _THP_SETTING) -> bool:
    """Whether the kernel backs memory with transparent huge pages on request."""
    try:
        with open(setting, encoding="ascii") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@functools.cache
def prepare_allocator() -> bool:
    """Sets up the process's allocators for long model runs (see the module doc); returns
    whether the mmap threshold was fixed. Call it before torch is first imported, so that
    torch sees ``THP_MEM_ALLOC_ENABLE`` (torch reads it once); later calls do nothing.

    Left alone: a threshold the user set (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``), a
    C library without ``mallopt``, and, where fresh mappings would cost about 12% of the
    speed, glibc's default is kept: on kernels without transparent huge pages, and when
    torch was imported before this call without ``THP_MEM_ALLOC_ENABLE``.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if os.environ.get("THP_MEM_ALLOC_ENABLE", "0") in ("", "0"):
        # torch came first (imported before bertbeam, without the variable): its buffers
        # would fault in 4 KiB pages, and glibc's default is faster (12% here).
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None or not huge_pages_available():
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


@contextmanager
def collector_paused() -> Iterator[None]:
    """Runs the block with Python's cyclic collector off, then freezes what it left
    (:func:`freeze_live_objects`) and restores the collector as it was (see the module doc).

    For phases that create long-lived objects by the hundred thousand: importing model
    libraries, loading a model, importing the report's plotting library. Nested blocks are
    fine; the outermost one turns the collector back on.

    Example::

        with collector_paused():
            model = AutoModel.from_pretrained(path)
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        freeze_live_objects()
        if enabled:
            gc.enable()


def freeze_live_objects() -> None:
    """Collects the garbage there is now, then takes every object still alive out of all
    later collections' walk (``gc.freeze``). One walk over the objects not frozen yet: after
    :func:`collector_paused` phases, those the run itself made.

    The command line calls it when a command has done its work, so that the interpreter's
    teardown, which collects after every module it clears, does not walk the libraries'
    objects again (2.4 s after an embedding run on the 2-core machine, 0.4 s frozen). An
    object frozen here that later becomes garbage in a cycle is never collected: what
    bertbeam freezes (modules, models, a finished command's leftovers) lives as long as the
    process, or nearly.
    """
    gc.collect()
    gc.freeze()


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
