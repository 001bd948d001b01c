"""Runner choice: the local default must not try to download Beam's Prism binary."""

from __future__ import annotations

import os
from typing import Any

from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
    WorkerOptions,
)
from apache_beam.portability.api import beam_provision_api_pb2

_LOCAL = {None, "", "directrunner", "direct", "fnapirunner"}


_ON_THIS_MACHINE = _LOCAL | {"bundlebaseddirectrunner", "switchingdirectrunner", "prismrunner",
                             "interactiverunner", "testdirectrunner"}


def is_remote(options: PipelineOptions) -> bool:
    """Whether the runner's workers run elsewhere (Dataflow, Flink, Spark, a portable job
    service): they cannot read the launcher's files. Beam's local runners of every kind
    (BundleBasedDirectRunner, Prism, ...) are not remote."""
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    return (name or "").lower() not in _ON_THIS_MACHINE


def is_local(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return runner is None or (isinstance(runner, str) and runner.lower() in _LOCAL)


def resolve_runner(options: PipelineOptions) -> Any:
    """The runner object for ``options``.

    Beam 2.77's DirectRunner first tries PrismRunner, which downloads a binary (offline it
    stalls, then falls back). For the default and ``DirectRunner`` we go straight to the
    FnApiRunner that DirectRunner would end up using for a batch pipeline; it honours
    ``--direct_num_workers`` and ``--direct_running_mode``. Other runners pass through.
    """
    if not is_local(options):
        return options.view_as(StandardOptions).runner
    # Beam's runner internals, on use
    from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers

    # Beam's runner internals, on use
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # The in-process worker's state cache has no option, only a module constant read when
    # the runner starts its worker: off for a streaming run (see _BEAM_EMBEDDED_CACHE_MB).
    streaming = bool(options.view_as(StandardOptions).streaming)
    worker_handlers.STATE_CACHE_SIZE_MB = 0 if streaming else _BEAM_EMBEDDED_CACHE_MB
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=provision)


_BEAM_EMBEDDED_CACHE_MB = 100
"""Beam's size of the in-process worker's state cache (``worker_handlers.STATE_CACHE_SIZE_MB``).

Beam's state cache weighs every value it takes with ``objsize``, which first walks the
globals of every loaded module: 1.2 ms a value once torch and transformers are loaded,
holding Python's lock. A streaming job writes one state value per document (its id, per
window, in ``DropRepeatedIds``) and reads it once, so the cache saves nothing and costs
1.2 ms a document: at 50 docs/s on 2 cores the local worker fell behind. Beam's SDK workers
(Dataflow, local worker processes) start with the cache off (``--max_cache_memory_usage_mb``
is 0 by default); only the in-process worker of the local runner has one, sized by this
module constant. Streaming runs turn it off; batch runs keep it (no per-document state, and
their side inputs are read through it).
"""


def local_parallelism(options: PipelineOptions) -> int:
    """How many workers (processes or threads) a local run uses."""
    direct = options.view_as(DirectOptions)
    n = direct.direct_num_workers
    return (os.cpu_count() or 1) if n == 0 else max(1, n or 1)


def local_processes(options: PipelineOptions) -> int:
    """How many processes a local run opens its outputs from (1 unless multi_processing)."""
    if not is_local(options):
        return 1
    mode = options.view_as(DirectOptions).direct_running_mode
    return local_parallelism(options) if mode == "multi_processing" else 1


def torch_threads(options: PipelineOptions) -> int | None:
    """Intra-op threads per worker so that local workers together use each core once."""
    if not is_local(options):
        return None
    workers = local_parallelism(options)
    return None if workers == 1 else max(1, (os.cpu_count() or 1) // workers)


def is_dry_run(options: PipelineOptions) -> bool:
    """``--dry_run=True`` (Beam's own flag): build the job, submit nothing."""
    return bool(options.view_as(TestOptions).dry_run)


def describe_dry_run(label: str, options: PipelineOptions, job: Any) -> str:
    """What a dry run built: the job's top-level steps, the options given and the worker
    settings Dataflow would use, for a person to read before submitting."""
    proto = job.proto_pipeline
    steps = [proto.components.transforms[t].unique_name
             for root in proto.root_transform_ids
             for t in proto.components.transforms[root].subtransforms] or [
        proto.components.transforms[root].unique_name for root in proto.root_transform_ids]
    given = options.get_all_options(drop_default=True, retain_unknown_options=True)
    flags = " ".join(f"--{k}={v}" for k, v in sorted(given.items()))
    worker = options.view_as(WorkerOptions)
    cloud = options.view_as(GoogleCloudOptions)
    settings = {
        "project": cloud.project, "region": cloud.region, "temp_location": cloud.temp_location,
        "machine_type": worker.machine_type or "(Dataflow's default)",
        "num_workers": worker.num_workers, "max_num_workers": worker.max_num_workers,
        "sdk_container_image": worker.sdk_container_image or "(Beam's default image)",
        "harness_threads": options.view_as(DebugOptions).number_of_worker_harness_threads,
        "service_options": ",".join(cloud.dataflow_service_options or []) or None,
        "experiments": ",".join(options.view_as(DebugOptions).experiments or []) or None,
    }
    workers = ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None)
    runner = options.view_as(StandardOptions).runner
    return "\n".join([
        f"{label}: dry run of {runner}: the job was built, not submitted (no input read, no "
        "bucket touched).",
        f"  steps ({len(steps)}): {', '.join(steps)}",
        f"  options: {flags}",
        f"  workers: {workers}",
    ])
