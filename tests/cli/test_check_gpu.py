"""``bertbeam check-gpu``: fails fast, with one clear line, on workers without CUDA."""

from __future__ import annotations

import pytest

from bertbeam.cli.check_gpu import CheckGpu, NoGpuError, _no_gpu_reason, run


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU")
def test_fails_on_a_worker_without_cuda(capsys):
    """On CPU workers the job fails, exit code 1, naming the worker and what to check."""
    assert run(["--probes", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bertbeam check-gpu: FAILED: Worker ")
    assert "sees no CUDA device (torch " in err
    assert "worker_accelerator" in err and "docker/Dockerfile.gpu" in err


@pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU")
def test_allow_cpu_reports_instead_of_failing(capsys):
    assert run(["--probes", "3", "--allow-cpu"]) == 0
    assert capsys.readouterr().out.strip() == "bertbeam check-gpu: OK: 3 probes on cpu bf16=False"


@pytest.mark.gpu
def test_passes_on_a_gpu_worker(capsys):
    assert run(["--probes", "2"]) == 0
    out = capsys.readouterr().out
    assert "OK: 2 probes on " in out and "cpu" not in out


def test_a_wrong_option_is_refused_before_the_job_starts(capsys):
    assert run(["--probes", "1", "--machine-type", "g2-standard-4"]) == 2
    assert "Did you mean --machine_type?" in capsys.readouterr().err


def test_reason_is_read_from_a_remote_runners_error_text():
    """Dataflow reports a worker's exception as text inside its own error."""
    text = ("Workflow failed. Causes: S01:ProbeDevice failed., Traceback ...\n"
            "bertbeam.cli.check_gpu.NoGpuError: Worker w-1 sees no CUDA device (torch 2.13.0).\n"
            "  [while running 'CheckGpu/ProbeDevice']")
    assert _no_gpu_reason(RuntimeError(text)) == "Worker w-1 sees no CUDA device (torch 2.13.0)."
    assert _no_gpu_reason(NoGpuError("Worker x sees no CUDA device. [while running 'P']")) == (
        "Worker x sees no CUDA device.")
    assert _no_gpu_reason(RuntimeError("something else")) is None


def test_probes_must_be_positive():
    with pytest.raises(ValueError, match="probes must be at least 1, got 0"):
        CheckGpu(probes=0)


def test_topology_says_the_layout_and_what_works_against_it():
    """check-gpu prints the GPU worker layout bertbeam wants (one SDK process, a few harness
    threads, one model per GPU, one GPU per VM) and names the option to change."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from bertbeam.cli.check_gpu import topology

    good = topology(PipelineOptions([
        "--experiments=no_use_multiple_sdk_containers", "--number_of_worker_harness_threads=4",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1"]), 16)
    assert good[0] == "SDK processes per worker: 1 (--experiments=no_use_multiple_sdk_containers)"
    assert good[1] == "harness threads per process: 4 (--number_of_worker_harness_threads)"
    assert "16 cores" in good[3] and good[4] == "GPUs per worker: 1"
    bad = topology(PipelineOptions([
        "--number_of_worker_harness_threads=12",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:2"]), None)
    assert "add --experiments=no_use_multiple_sdk_containers" in bad[0]
    assert "more than 4 contend" in bad[1] and "use count:1 and more workers" in bad[4]
    assert "set --number_of_worker_harness_threads=4" in topology(PipelineOptions([]), 4)[1]


@pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU")
def test_the_check_prints_its_topology(capsys):
    assert run(["--probes", "1", "--allow-cpu", "--experiments=no_use_multiple_sdk_containers"]) == 0
    err = capsys.readouterr().err
    assert "bertbeam check-gpu: topology: SDK processes per worker: 1" in err
    assert f"native threads on {__import__('os').cpu_count()} cores" in err
