"""Heap trimming between CPU batches: glibc only, at most once per interval."""

from __future__ import annotations

import platform

import pytest

from bertbeam.memory import HeapTrimmer


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trims_at_most_once_per_interval(monkeypatch):
    clock = iter([0.0, 0.5, 1.2, 1.3, 2.5])
    monkeypatch.setattr("bertbeam.memory.time.monotonic", lambda: next(clock))
    trimmer = HeapTrimmer(interval_s=1.0)  # created at t=0
    assert trimmer.available
    assert [trimmer.maybe_trim() for _ in range(4)] == [False, True, False, True]


def test_without_malloc_trim_it_is_a_no_op(monkeypatch):
    monkeypatch.setattr("bertbeam.memory._malloc_trim", lambda: None)
    trimmer = HeapTrimmer(interval_s=0.0)
    assert not trimmer.available and trimmer.maybe_trim() is False
