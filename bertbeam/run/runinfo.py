"""Run metadata for ``_SUMMARY.json``: versions, timestamps, locations, the model and where it
runs, every option. Built on the launcher before the pipeline starts (:func:`run_metadata`)
and completed with the timings when it has finished (:func:`finished`), by the launcher or
by the pipeline's last stage (``--no-wait``)."""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from importlib.resources import files
from typing import Any

import bertbeam
from bertbeam.config import ModelSpec
from bertbeam.core.models import resolve_cpu_streams, resolve_device, resolve_dtype

SUMMARY_SCHEMA_VERSION = 3
"""``schema_version`` of ``_SUMMARY.json`` (``bertbeam/run/schemas/summary.schema.json``)."""

_IMPORTED_AT = time.time()


def summary_schema() -> dict[str, Any]:
    """The JSON Schema of ``_SUMMARY.json``, shipped in the package."""
    return json.loads((files("bertbeam.run") / "schemas" / "summary.schema.json").read_text())


def utc_iso(epoch: float) -> str:
    """``2026-11-28T21:14:42.123Z``: UTC, ISO 8601, milliseconds."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def new_run_id(epoch: float) -> str:
    """A sortable, unique run id: ``20261128T211442Z-1a2b3c4d``."""
    stamp = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


def process_started() -> float:
    """When bertbeam's own process started (epoch seconds).

    The kernel's start time of this process (``/proc``) is that of whatever was exec'd
    into it first: the last command of ``bash -c "... && bertbeam ..."`` (cron, Airflow)
    runs in the shell's process, which started at the first command. So the start time
    holds only when it is close to when ``bertbeam`` was first imported (Python's own
    start-up, under a second, is then counted too); otherwise, and off Linux, the import
    time is the start.
    """
    imported = getattr(bertbeam, "_IMPORTED_AT", _IMPORTED_AT)
    kernel = _kernel_start_time()
    if kernel is None or not 0 <= imported - kernel <= _STARTUP_SECONDS:
        return imported
    return kernel


_STARTUP_SECONDS = 3.0
"""The longest Python start-up (interpreter, site-packages) before ``import bertbeam``."""


def _kernel_start_time() -> float | None:
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def versions() -> dict[str, str | None]:
    """Versions of bertbeam and what its results depend on."""
    out: dict[str, str | None] = {}
    for key, dist in (("bertbeam", "bertbeam"), ("apache_beam", "apache-beam"), ("torch", "torch"),
                      ("transformers", "transformers"), ("tokenizers", "tokenizers")):
        try:
            out[key] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[key] = None
    out["python"] = platform.python_version()
    return out


def resolve_runtime(spec: ModelSpec, *, local: bool) -> dict[str, Any]:
    """Backend (torch or onnx), quantization, device, dtype, torch threads and CPU streams as a
    local worker resolves them; for a remote runner, the requested values (each worker
    resolves ``auto`` itself)."""
    backend = {"backend": spec.backend, "quantization": spec.quantize}
    if not local:
        return {**backend, "device": spec.device, "dtype": spec.dtype, "threads": spec.num_threads,
                "streams": None if spec.cpu_streams == "auto" else spec.cpu_streams}
    import torch  # the model stack loads where it is used (start-up)

    device = resolve_device(spec.device)
    threads = spec.num_threads or torch.get_num_threads()
    streams = resolve_cpu_streams(spec.cpu_streams, threads) if device.type == "cpu" else 1
    dtype = str(resolve_dtype(spec.dtype, device)).removeprefix("torch.")
    if spec.quantize == "int8":
        dtype = f"{dtype} (int8 linear layers)"
    return {**backend, "device": device.type, "dtype": dtype, "threads": threads,
            "streams": streams}


def finished(meta: dict[str, Any], *, pipeline_started: float, process_started: float,
             now: float | None = None) -> dict[str, Any]:
    """``meta`` with ``finished_at`` and the pipeline's and the process's seconds."""
    now = time.time() if now is None else now
    return {**meta, "finished_at": utc_iso(now),
            "pipeline_seconds": round(now - pipeline_started, 3),
            "process_seconds": round(now - process_started, 3)}
