"""The Dataflow jobs of README.md (Run on Dataflow), built offline: every documented
command is run with ``--dry_run=True``, so Beam parses its Dataflow options, builds the
pipeline proto and the Dataflow job, and we build the job's environment (worker pool,
container image, service options) and unpickle every DoFn, without credentials or network.
A wrong option or an unpicklable transform fails here instead of on the cluster."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import apache_beam as beam
import pytest

from tests.conftest import SAMPLE_TEXTS, write_corpus

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "README.md"
LAUNCHER = "bertbeam_in_image"
SHELL_VARS = {
    "PROJECT": "my-project",
    "REGION": "us-central1",
    "BUCKET": "my-bucket",
    "IMAGE": "us-central1-docker.pkg.dev/my-project/bertbeam/bertbeam-gpu:0.1.0",
    "CPU_IMAGE": "us-central1-docker.pkg.dev/my-project/bertbeam/bertbeam-cpu:0.1.0",
}


def _expand(text: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: SHELL_VARS[m.group(1)], text)


def documented_commands() -> list[list[str]]:
    """``bertbeam`` argv (subcommand first) of every launch in the doc's bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line)
            while tokens and re.fullmatch(r"\w+=.*", tokens[0]):
                tokens = tokens[1:]  # LAUNCH_IMAGE=... prefix
            if tokens and tokens[0] == LAUNCHER:
                commands.append([_expand(t) for t in tokens[1:]])
    return commands


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.fixture(scope="module")
def local_files(tiny_model, tmp_path_factory) -> dict[str, dict[str, str]]:
    """Launcher-side stand-ins for the doc's gs:// input and models (preflight reads them)."""
    corpus = write_corpus(tmp_path_factory.mktemp("df-corpus") / "part-0.parquet",
                          {"id": [f"d{i}" for i in range(len(SAMPLE_TEXTS))], "text": SAMPLE_TEXTS})
    out = str(tmp_path_factory.mktemp("df-out"))
    return {
        "embed": {"--input": corpus, "--output": out, "--model": tiny_model("bert", "base")},
        "label": {"--input": corpus, "--output": out, "--model": tiny_model("bert", "classify")},
    }


def dry_run(argv: list[str], local: dict[str, str] | None = None):
    """Builds ``bertbeam <argv>`` as a Dataflow job without submitting it; returns the
    Beam options and the runner's ``apiclient.Job``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from bertbeam.cli import check_gpu, embed, label
    from bertbeam.cli.options import parse_command
    from bertbeam.run import job as common
    from bertbeam.run.runners import resolve_runner

    command, rest = argv[0], list(argv[1:])
    for flag, value in (local or {}).items():
        if flag in rest:
            assert rest[rest.index(flag) + 1].startswith("gs://"), (flag, argv)
            rest[rest.index(flag) + 1] = value
    rest.append("--dry_run=True")
    if command == "check-gpu":
        args, _ = parse_command(check_gpu.parser(), check_gpu.OPTIONS, rest)
        options = PipelineOptions(rest)
        p = beam.Pipeline(runner=resolve_runner(options), options=options)
        check_gpu.build(p, args)
    else:
        job, options = {"embed": embed, "label": label}[command].make_job(rest)
        prepared = common.preflight(job)
        p = beam.Pipeline(runner=resolve_runner(options), options=options)
        common.build(p, job, prepared)
    return options, p.run().job


def job_environment(options, job):
    """The Dataflow ``Environment`` the runner would submit (worker pool, image, options),
    built as the runner builds it after staging, with a placeholder pipeline URL."""
    from apache_beam.runners.dataflow.internal import apiclient

    return apiclient.Environment(
        packages=[], options=options, environment_version="8",
        proto_pipeline_staged_url="gs://staging/pipeline.pb",
        proto_pipeline=job.proto_pipeline).proto


def unpickle_dofns(proto_pipeline) -> int:
    """Unpickles every Python DoFn of the pipeline proto, as a worker does; returns how many."""
    from apache_beam.internal import pickler
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    n = 0
    for transform in proto_pipeline.components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            if payload.do_fn.urn == "beam:dofn:pickled_python_info:v1":
                assert pickler.loads(payload.do_fn.payload) is not None
                n += 1
    return n


def test_the_doc_launches_check_gpu_a_gpu_job_and_a_cpu_job():
    """The Dataflow page documents the GPU check, a GPU embed job and a CPU label job."""
    commands = documented_commands()
    assert [c[0] for c in commands] == ["check-gpu", "embed", "label"]
    gpu = [c for c in commands if _flag(c, "--sdk_container_image") == SHELL_VARS["IMAGE"]]
    assert [c[0] for c in gpu] == ["check-gpu", "embed"]
    for command in gpu:
        assert "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" in command
        assert _flag(command, "--experiments") == "no_use_multiple_sdk_containers"


@pytest.mark.parametrize("index", range(3), ids=["check-gpu", "embed-gpu", "label-cpu"])
def test_documented_command_builds_a_dataflow_job(index, local_files):
    """Each documented command parses, builds a Dataflow job with the options it names, and
    every DoFn in the job unpickles."""
    argv = documented_commands()[index]
    options, job = dry_run(argv, local_files.get(argv[0]))
    env = job_environment(options, job)
    pool = env.worker_pools[0]

    assert job.proto.name.startswith("beamapp-")
    assert pool.machine_type == _flag(argv, "--machine_type")
    assert pool.worker_harness_container_image == _flag(argv, "--sdk_container_image")
    assert options.get_all_options()["sdk_location"] == "container"
    accelerator = _flag(argv, "--dataflow_service_options")
    assert list(env.service_options) == ([accelerator] if accelerator else [])
    if "no_use_multiple_sdk_containers" in argv:
        # One SDK process per VM: one model copy per GPU.
        assert "no_use_multiple_sdk_containers" in env.experiments
        assert "use_multiple_sdk_containers" not in env.experiments
        assert pool.num_threads_per_worker == int(_flag(argv, "--number_of_worker_harness_threads"))
    else:
        assert "use_multiple_sdk_containers" in env.experiments
    if _flag(argv, "--max_num_workers"):
        assert pool.autoscaling_settings.max_num_workers == int(_flag(argv, "--max_num_workers"))

    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    expected = {"CheckGpu"} if argv[0] == "check-gpu" else {
        "ReadDocuments", "Infer", "Infer/RunModel", "WriteResults", "WriteDeadLetter"}
    assert expected <= names
    assert unpickle_dofns(job.proto_pipeline) >= (1 if argv[0] == "check-gpu" else 8)


def test_a_misspelled_dataflow_option_fails_before_anything_runs():
    """Beam only warns about unknown flags; bertbeam refuses them (a GPU job launched with
    ``--machine-type`` would silently run on the default machine, without a GPU)."""
    argv = documented_commands()[0]
    argv = [a if a != "--machine_type" else "--machine-type" for a in argv]
    with pytest.raises(ValueError, match="--machine-type.*Did you mean --machine_type"):
        dry_run(argv)


class _HoldsAGenerator(beam.DoFn):
    def __init__(self):
        self._rows = (i for i in range(3))  # e.g. a reader opened on the launcher

    def process(self, element):
        yield element


def test_an_unpicklable_dofn_fails_the_dry_run():
    """Building the graph pickles each DoFn, so one that cannot travel to workers fails here."""
    from apache_beam.options.pipeline_options import PipelineOptions

    argv = documented_commands()[0]
    options = PipelineOptions([*argv[argv.index("--runner"):], "--dry_run=True"])
    p = beam.Pipeline(options=options)
    with pytest.raises(RuntimeError, match="Unable to pickle fn .*_HoldsAGenerator"):
        p | beam.Create([1]) | beam.ParDo(_HoldsAGenerator())
        p.run()
