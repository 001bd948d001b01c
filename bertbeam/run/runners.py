"""Runner choice: the local default must not try to download Beam's Prism binary."""

from __future__ import annotations

import os
from typing import Any

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

_LOCAL = {None, "", "directrunner", "direct", "fnapirunner"}


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
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=provision)


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
