"""Fail fast when workers see no GPU: ``bertbeam check-gpu [--allow-cpu] [beam options]``.

A tiny job, launched with the same image and worker options as the real one: each probe
runs on a worker, asks torch for a CUDA device, runs one small matmul on it (a driver that
does not match the CUDA build fails here, not an hour into a job) and reports the device,
bf16 support and the torch / CUDA versions. Without a CUDA device the probe raises, so the
job fails with one clear line within minutes. ``--allow-cpu`` reports instead of failing
(for checking the job itself on a machine without a GPU).

Example::

    bertbeam check-gpu --runner DataflowRunner --project P --region R \\
        --temp_location gs://B/tmp --sdk_container_image IMAGE --sdk_location container \\
        --dataflow_service_options "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" \\
        --machine_type g2-standard-4
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions, PipelineOptions

from bertbeam.cli.options import CheckGpuOptions, CommandParser, command_parser, parse_command
from bertbeam.run.runners import resolve_runner

_LOG = logging.getLogger("bertbeam")
NAMESPACE = "bertbeam.check_gpu"
CPUS_NAMESPACE = "bertbeam.check_gpu.cpus"
HARNESS_THREADS = 4
"""Harness threads per SDK process a GPU worker wants (docs/performance.md, Feeding the model)."""


class NoGpuError(RuntimeError):
    """A worker has no usable CUDA device."""


def probe_device() -> dict:
    """What this process sees: host, CUDA availability, device name, bf16, versions."""
    import torch  # on the worker: the launcher needs no CUDA build of torch

    info = {
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda": torch.cuda.is_available(),
        "devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "device": "cpu",
        "bf16": False,
        "cpus": os.cpu_count(),
    }
    if info["cuda"]:
        info["device"] = torch.cuda.get_device_name(0)
        info["bf16"] = torch.cuda.is_bf16_supported()
        x = torch.ones(64, 64, device="cuda", dtype=torch.bfloat16 if info["bf16"] else torch.float16)
        info["matmul_ok"] = bool((x @ x)[0, 0].item() == 64)
    return info


def no_gpu_message(info: dict) -> str:
    build = f"CUDA {info['cuda_build']}" if info["cuda_build"] else "a CPU-only build"
    return (
        f"Worker {info['host']} sees no CUDA device (torch {info['torch']}, {build}). Check "
        "--dataflow_service_options \"worker_accelerator=type:...;count:1;install-nvidia-driver\", "
        "a GPU --machine_type, and that --sdk_container_image has a CUDA build of torch "
        "(docker/Dockerfile.gpu)."
    )


class _ProbeFn(beam.DoFn):
    def __init__(self, allow_cpu: bool):
        self._allow_cpu = allow_cpu

    def process(self, probe: int) -> Iterator[dict]:
        info = probe_device()
        if not info["cuda"] and not self._allow_cpu:
            raise NoGpuError(no_gpu_message(info))
        if info.get("matmul_ok") is False:
            raise NoGpuError(f"Worker {info['host']}: a bf16/fp16 matmul on {info['device']} "
                             "gave a wrong result; the driver and torch's CUDA build disagree.")
        Metrics.counter(NAMESPACE, f"{info['device']} bf16={info['bf16']}").inc()
        Metrics.counter(CPUS_NAMESPACE, str(info["cpus"])).inc()
        _LOG.warning("check-gpu probe %d: %s", probe, info)
        yield info


class CheckGpu(beam.PTransform):
    """Pipeline root -> one device report dict per probe; raises NoGpuError on a worker
    without CUDA unless ``allow_cpu``.

    Example::

        reports = p | CheckGpu(probes=8)
    """

    def __init__(self, *, probes: int = 8, allow_cpu: bool = False):
        super().__init__()
        if probes < 1:
            raise ValueError(f"probes must be at least 1, got {probes!r}.")
        self._probes = probes
        self._allow_cpu = allow_cpu

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Probes" >> beam.Create(list(range(self._probes)))
            | "SpreadOverWorkers" >> beam.Reshuffle()
            | "ProbeDevice" >> beam.ParDo(_ProbeFn(self._allow_cpu))
        )


OPTIONS = (CheckGpuOptions,)


def parser() -> CommandParser:
    return command_parser("bertbeam check-gpu",
                          "Fail fast when the workers of a pipeline see no CUDA device.", OPTIONS)


def build(p: beam.Pipeline, args: argparse.Namespace) -> None:
    p | "CheckGpu" >> CheckGpu(probes=args.probes, allow_cpu=args.allow_cpu)


def topology(options: PipelineOptions, cpus: int | None) -> list[str]:
    """The layout a bertbeam job with these options gets on each GPU worker of ``cpus``
    vCPUs, one line per choice, each with what to change where an option works against it:
    one SDK process (one model per GPU), a few harness threads sharing it, the tokenizer's
    native threads on every core, one GPU per VM (docs/performance.md, Feeding the model)."""
    debug = options.view_as(DebugOptions)
    single = "no_use_multiple_sdk_containers" in (debug.experiments or [])
    threads = debug.number_of_worker_harness_threads
    service = options.view_as(GoogleCloudOptions).dataflow_service_options or []
    accelerator = next((o for o in service if o.startswith("worker_accelerator=")), "")
    count = re.search(r"count:(\d+)", accelerator)
    gpus = int(count.group(1)) if count else None
    cores = f"{cpus} cores" if cpus else "every core"
    lines = [
        "SDK processes per worker: 1 (--experiments=no_use_multiple_sdk_containers)" if single else
        "SDK processes per worker: one per vCPU (Dataflow's default), each loading its own copy "
        "of the model onto the GPU: add --experiments=no_use_multiple_sdk_containers",
        f"harness threads per process: {threads} (--number_of_worker_harness_threads)"
        + (f"; more than {HARNESS_THREADS} contend for Python's lock and each can hold a batch "
           "in GPU memory" if threads > HARNESS_THREADS else "") if threads else
        f"harness threads per process: Dataflow's default; set --number_of_worker_harness_threads="
        f"{HARNESS_THREADS} (one thread's batches run on the GPU while the others read, "
        "tokenize and write)",
        "model: one copy per SDK process on cuda:0, shared by its threads (bertbeam's engine)",
        f"tokenizing: the tokenizer's native threads on {cores}, outside Python's lock; "
        "bertbeam's own per-document work (reading, batching, post-processing, writing) holds "
        "the lock on one core",
        f"GPUs per worker: {gpus if gpus is not None else 'not set (worker_accelerator=type:...;count:1)'}"
        + ("; a process uses cuda:0 only: use count:1 and more workers" if gpus and gpus > 1 else ""),
    ]
    return lines


def device_counts(result: object, namespace: str = NAMESPACE) -> dict[str, int]:
    """Probes per ``"<device> bf16=<bool>"`` (per vCPU count with ``CPUS_NAMESPACE``) from a
    finished run's counters."""
    counts: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        counts[c.key.metric.name] = counts.get(c.key.metric.name, 0) + int(value or 0)
    return counts


def _no_gpu_reason(exc: BaseException) -> str | None:
    """The probe's message from a failed run: the local runner re-raises NoGpuError itself,
    remote runners (Dataflow) quote it in their error text."""
    if isinstance(exc, NoGpuError):
        return str(exc).split(" [while running", 1)[0]
    text, name = str(exc), f"{NoGpuError.__name__}: "
    marker = text.rfind(name)
    return text[marker + len(name):].splitlines()[0] if marker >= 0 else None


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the check; returns 0 when every probe found a GPU (or ``--allow-cpu``), 1 when
    one did not, 2 for a mistake in the command line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        args, _ = parse_command(parser(), OPTIONS, argv)
        options = PipelineOptions(argv)
        p = beam.Pipeline(runner=resolve_runner(options), options=options)
        build(p, args)
        result = p.run()
        result.wait_until_finish()
    except ValueError as exc:
        print(f"bertbeam: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        reason = _no_gpu_reason(exc)
        if reason is None:
            raise
        print(f"bertbeam check-gpu: FAILED: {reason}", file=sys.stderr)
        return 1
    counts = device_counts(result)
    print("bertbeam check-gpu: OK: " + (", ".join(
        f"{n} probes on {device}" for device, n in sorted(counts.items())) or "no probes reported"))
    cpus = [int(n) for n in device_counts(result, CPUS_NAMESPACE) if n.isdigit()]
    for line in topology(options, min(cpus) if cpus else None):
        print(f"bertbeam check-gpu: topology: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run())
