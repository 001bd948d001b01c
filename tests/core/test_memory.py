"""Heap trimming between CPU batches: glibc only, at most once per interval."""

from __future__ import annotations

import os
import platform

import pytest

from bertbeam.core.memory import HeapTrimmer


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trims_at_most_once_per_interval(monkeypatch):
    clock = iter([0.0, 0.5, 1.2, 1.3, 2.5])
    monkeypatch.setattr("bertbeam.core.memory.time.monotonic", lambda: next(clock))
    trimmer = HeapTrimmer(interval_s=1.0)  # created at t=0
    assert trimmer.available
    assert [trimmer.maybe_trim() for _ in range(4)] == [False, True, False, True]


def test_without_malloc_trim_it_is_a_no_op(monkeypatch):
    monkeypatch.setattr("bertbeam.core.memory._malloc_trim", lambda: None)
    trimmer = HeapTrimmer(interval_s=0.0)
    assert not trimmer.available and trimmer.maybe_trim() is False


_FRAGMENTING_RUN = """
import ctypes, json, sys, threading
import numpy as np
from bertbeam.core.memory import prepare_allocator

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
tuned = prepare_allocator() if sys.argv[1] == "tuned" else False
held = []

def batches():
    # What a CPU stream does: buffers of a new size each batch (activations), freed, with
    # a small output kept past the batch (until the main thread gathers it).
    rng = np.random.default_rng(0)
    for _ in range(150):
        buffers = [np.ones(int(rng.integers(1 << 20, 24 << 20)), np.uint8) for _ in range(3)]
        held.append(np.ones(64 << 10, np.uint8))
        del buffers

before = libc.mallinfo2().arena
thread = threading.Thread(target=batches)
thread.start()
thread.join()
print(json.dumps({"tuned": tuned, "grown_mib": (libc.mallinfo2().arena - before) / 2**20}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")
def test_the_allocator_settings_keep_a_streams_arena_from_growing_batch_after_batch():
    """With glibc's defaults, buffers of a new size each batch are carved above the small
    outputs still held and the arena grows with the batches run (that was peak RSS growing
    with the corpus); with :func:`prepare_allocator`, large buffers get mappings of their own
    and the arena holds the small outputs only."""
    import json
    import subprocess
    import sys

    from bertbeam.core.memory import huge_pages_available

    if not huge_pages_available():
        pytest.skip("no transparent huge pages: prepare_allocator keeps glibc's defaults")
    runs = {}
    for mode in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", _FRAGMENTING_RUN, mode], check=True,
                             capture_output=True, text=True, env={
                                 k: v for k, v in os.environ.items()
                                 if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")})
        runs[mode] = json.loads(out.stdout)
    assert runs["tuned"]["tuned"] is True
    # 150 held outputs of 64 KiB are ~10 MiB; the untuned arena grows far more.
    assert runs["tuned"]["grown_mib"] < 20 < 40 < runs["default"]["grown_mib"], runs


def test_prepare_allocator_leaves_a_users_own_settings_alone(monkeypatch):
    from bertbeam.core import memory

    calls = []
    monkeypatch.setattr(memory, "_libc_function", lambda name: lambda *a: calls.append(a) or 1)
    monkeypatch.setattr(memory, "huge_pages_available", lambda: True)
    for env in ({"MALLOC_MMAP_THRESHOLD_": "65536"},
                {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}):
        memory.prepare_allocator.cache_clear()
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert memory.prepare_allocator() is False
    monkeypatch.setattr(memory, "huge_pages_available", lambda: False)
    memory.prepare_allocator.cache_clear()
    assert memory.prepare_allocator() is False
    assert calls == []
    memory.prepare_allocator.cache_clear()


def test_huge_pages_setting_is_read_from_the_kernels_file(tmp_path):
    from bertbeam.core.memory import huge_pages_available

    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    assert not huge_pages_available(str(setting))
    setting.write_text("always [madvise] never\n")
    assert huge_pages_available(str(setting))
    assert not huge_pages_available(str(tmp_path / "missing"))


def test_prepare_allocator_keeps_glibcs_default_when_torch_came_first(monkeypatch):
    """torch imported before bertbeam, without THP_MEM_ALLOC_ENABLE, allocates in 4 KiB
    pages: a fixed mmap threshold would then cost ~12% of the speed, so none is set."""
    import sys

    from bertbeam.core import memory

    calls = []
    monkeypatch.setattr(memory, "_libc_function", lambda name: lambda *a: calls.append(a) or 1)
    monkeypatch.setattr(memory, "huge_pages_available", lambda: True)
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch", object()))
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    memory.prepare_allocator.cache_clear()
    try:
        assert memory.prepare_allocator() is False and calls == []
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")  # set by the user before the import
        memory.prepare_allocator.cache_clear()
        assert memory.prepare_allocator() is True and len(calls) == 1
    finally:
        memory.prepare_allocator.cache_clear()


def _tracked(obj: object) -> bool:
    """Whether ``obj`` is in a generation the collector still walks (not frozen)."""
    import gc

    return any(o is obj for o in gc.get_objects())


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_collector_paused_runs_the_block_without_collections_then_freezes_what_it_left():
    import gc
    import weakref

    from bertbeam.core.memory import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested: the inner block leaves the collector off
            pass
        assert not gc.isenabled()
        kept = _Node()
        dropped = weakref.ref(_Node())  # garbage in a cycle, left by the block
        assert dropped() is not None  # nothing collected it inside the block
    assert gc.isenabled()
    assert dropped() is None, "the block's cyclic garbage is collected before the freeze"
    assert not _tracked(kept), "what the block left is frozen: later collections skip it"


def test_collector_paused_restores_the_collector_when_the_block_fails():
    import gc

    from bertbeam.core.memory import collector_paused

    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("load failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled(), "a collector the caller turned off stays off"
    finally:
        gc.enable()


def test_a_loaded_model_is_frozen_and_the_collector_is_back_on(tiny_model):
    import gc
    import weakref

    from bertbeam.config import ModelSpec
    from bertbeam.core.models import load_model

    loaded = load_model(ModelSpec(uri=tiny_model("bert", "base"), device="cpu"), "AutoModel")
    assert gc.isenabled()
    assert not _tracked(loaded.model) and not _tracked(loaded.tokenizer)
    # Frozen objects in a cycle are never collected: a dropped model must not be in one, or
    # its weights would stay for the life of the process.
    weight = weakref.ref(next(loaded.model.parameters()))
    del loaded
    assert weight() is None, "a dropped model is freed by reference counting, weights included"


def test_the_command_line_freezes_what_is_left_when_a_command_ends(monkeypatch):
    """Also when the command fails: the interpreter's exit must not walk the libraries."""
    from bertbeam.cli import main
    from bertbeam.core import memory

    calls = []
    monkeypatch.setattr(memory, "freeze_live_objects", lambda: calls.append("frozen"))
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    assert calls == ["frozen", "frozen"]  # after the command's imports, and at its end
