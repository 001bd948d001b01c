"""The local runner bertbeam builds: Beam's in-process state cache off for streaming runs."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers

from bertbeam.run.runners import resolve_runner


def test_a_local_streaming_run_keeps_no_state_cache_and_a_batch_run_keeps_beams():
    """The state cache weighs each value by walking every loaded module's globals (1.2 ms a
    document with torch loaded); a streaming run writes one value per document and reads it
    once, so its in-process worker runs without the cache, as Beam's SDK workers do."""
    resolve_runner(PipelineOptions(["--streaming"]))
    assert worker_handlers.STATE_CACHE_SIZE_MB == 0
    assert PipelineOptions([]).view_as(WorkerOptions).max_cache_memory_usage_mb == 0

    resolve_runner(PipelineOptions([]))
    assert worker_handlers.STATE_CACHE_SIZE_MB == 100
