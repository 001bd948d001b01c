"""The Dataflow jobs of docs/dataflow.md, built offline: every documented
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

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "dataflow.md"
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


CLOSED_PORT = "http://127.0.0.1:9"
"""A Cloud Storage endpoint that refuses every connection: a dry run that touched a bucket
(a footer, a listing, a probe) would fail in a second."""


def cache_model(uri: str, local_dir: str, cache_dir: str) -> None:
    """Puts ``local_dir`` into the model cache as ``uri``'s copy (what a first run that
    reaches the bucket leaves behind), so a dry run finds the model offline."""
    import shutil

    from bertbeam.core import models

    target = Path(cache_dir) / "models" / models._cache_key(uri)
    shutil.copytree(local_dir, target, dirs_exist_ok=True)
    (target / models._CACHE_COMPLETE).write_text(uri)


@pytest.fixture(scope="module")
def model_cache(tiny_model, tmp_path_factory) -> str:
    """A model cache holding the doc's gs:// models (tiny stand-ins)."""
    cache = str(tmp_path_factory.mktemp("df-cache"))
    bucket = SHELL_VARS["BUCKET"]
    cache_model(f"gs://{bucket}/models/all-MiniLM-L6-v2", tiny_model("bert", "base"), cache)
    cache_model(f"gs://{bucket}/models/my-classifier", tiny_model("bert", "classify"), cache)
    return cache


def record_pipeline_runs(monkeypatch) -> list:
    """Every ``Pipeline.run`` from now on appends ``(options, result)`` to the returned list
    (a dry run's result holds the Dataflow job it built)."""
    built = []
    original = beam.Pipeline.run

    def run(self, *args, **kwargs):
        built.append((self.options, original(self, *args, **kwargs)))
        return built[-1][1]

    monkeypatch.setattr(beam.Pipeline, "run", run)
    return built


def dry_run(argv: list[str], model_cache: str | None = None, *, monkeypatch=None, capsys=None):
    """Runs ``bertbeam <argv> --dry_run=True`` as a user does, with Cloud Storage
    unreachable; returns the Beam options, the runner's ``apiclient.Job`` and what the
    command printed."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from bertbeam.cli import check_gpu
    from bertbeam.cli.options import parse_command
    from bertbeam.run.runners import resolve_runner

    command, rest = argv[0], [*argv[1:], "--dry_run=True"]
    if command == "check-gpu":
        args, _ = parse_command(check_gpu.parser(), check_gpu.OPTIONS, rest)
        options = PipelineOptions(rest)
        p = beam.Pipeline(runner=resolve_runner(options), options=options)
        check_gpu.build(p, args)
        return options, p.run().job, ""
    built = record_pipeline_runs(monkeypatch)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", CLOSED_PORT)
    capsys.readouterr()
    assert run_cli(*argv, "--dry_run=True", "--model-cache-dir", model_cache) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    options, result = built[-1]
    return options, result.job, printed.out


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
def test_documented_command_builds_a_dataflow_job(index, model_cache, monkeypatch, capsys):
    """Each documented command, run as written with ``--dry_run=True`` and no reachable
    bucket, exits 0, prints the steps, options and workers, builds a Dataflow job with the
    options it names, and every DoFn in the job unpickles."""
    argv = documented_commands()[index]
    options, job, printed = dry_run(argv, model_cache, monkeypatch=monkeypatch, capsys=capsys)
    if argv[0] != "check-gpu":
        lines = printed.splitlines()
        task = _flag(argv, "--task") or argv[0]
        assert lines[0] == (f"bertbeam {task}: dry run of DataflowRunner: the job was built, "
                            "not submitted (no input read, no bucket touched).")
        assert lines[1].startswith("  steps (7): ReadDocuments, KeyByText, Infer, StampResults, "
                                   "WriteResults")
        assert f"--input={_flag(argv, '--input')}" in lines[2]
        assert f"machine_type {_flag(argv, '--machine_type')}" in lines[3]
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


def test_local_paths_with_a_remote_runner_are_refused(tmp_path, model_cache, capsys):
    """Workers cannot read the launcher's files: a local --input, --output or --previous
    with DataflowRunner is one line, exit 2."""
    argv = documented_commands()[1]
    for flag, local in (("--input", str(tmp_path / "*.parquet")), ("--output", str(tmp_path)),
                        ("--previous", str(tmp_path / "day-1"))):
        rest = list(argv[1:])
        if flag in rest:
            rest[rest.index(flag) + 1] = local
        else:
            rest += [flag, local]
        capsys.readouterr()
        assert run_cli(argv[0], *rest, "--dry_run=True", "--model-cache-dir", model_cache) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"bertbeam: error: {flag} {local!r} is a local path, but the runner is "
                       "remote: its workers cannot read this machine's files; use a gs:// (or "
                       "other shared) URL."), err


def test_an_unreachable_bucket_fails_in_one_line(tmp_path, tiny_model, monkeypatch, capsys):
    """A job whose gs:// input cannot be reached fails at launch, after one refused request
    (not gcsfs's retries), in one line."""
    import urllib.request

    calls = []
    real = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", CLOSED_PORT)
    tiny = tiny_model("bert", "base")
    capsys.readouterr()
    assert run_cli("embed", "--input", "gs://my-bucket/corpus/*.parquet", "--output",
                   tmp_path / "out", "--model", tiny) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bertbeam: error: Cloud Storage is unreachable at {CLOSED_PORT} for "
                          "gs://my-bucket (")
    assert len(err.splitlines()) == 1 and len(calls) == 1


def test_a_model_not_cached_is_one_line_in_a_dry_run(tmp_path, monkeypatch, capsys):
    argv = documented_commands()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", CLOSED_PORT)
    assert run_cli(*argv, "--dry_run=True", "--model-cache-dir", tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert "--dry_run=True builds the job offline, but model" in err and "Traceback" not in err


class _Result:
    """A PipelineResult whose runner serves counters while the job runs (or none)."""

    def __init__(self, served: bool):
        self.served = served

    def job_id(self):
        return "2026-12-06_01_02_03-123"

    def metrics(self):
        if not self.served:
            raise NotImplementedError("no metrics")
        from apache_beam.metrics.execution import MetricKey, MetricResult
        from apache_beam.metrics.metricbase import MetricName

        def counter(name, value):
            return MetricResult(MetricKey("Infer", MetricName("bertbeam", name)), None, value)

        class _Query:
            def query(self, _filter):
                return {"counters": [counter("documents_written", 700),
                                     counter("documents_dead_lettered", 20)]}

        return _Query()


def test_remote_progress_comes_from_the_runners_metrics():
    import io

    from bertbeam.run.progress import RemoteProgress

    stream = io.StringIO()
    progress = RemoteProgress(_Result(served=True), 1000, label="bertbeam embed", stream=stream)
    assert progress.sample() is True
    assert progress.lines[0].startswith("bertbeam embed: 720/1000 documents (72.0%) after ")
    assert "20 dead-lettered (the runner's counters" in progress.lines[0]
    silent = RemoteProgress(_Result(served=False), 1000, label="bertbeam embed", stream=stream)
    assert silent.sample() is False
    assert silent.lines == ["bertbeam embed: no progress until the job ends: the runner serves "
                            "no metrics while it runs (NotImplementedError); follow the job in "
                            "the runner's own UI (job 2026-12-06_01_02_03-123)."]


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


@pytest.mark.parametrize("sink", ["milvus:vectors.db", "qdrant:qdrant-dir"])
def test_an_embedded_sink_with_a_remote_runner_is_refused(sink, model_cache, monkeypatch, capsys):
    """Milvus Lite and Qdrant local mode live in the launcher's process: a Dataflow job (a dry
    run too) is refused in one line; a server URL is not."""
    argv = documented_commands()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", CLOSED_PORT)
    capsys.readouterr()
    assert run_cli(*argv, "--dry_run=True", "--model-cache-dir", model_cache, "--sink", sink) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"bertbeam: error: --sink {sink} is an embedded database on this machine, "
                   "which remote workers cannot reach; use a server URL."), err


def test_a_sink_server_builds_into_the_dataflow_job(model_cache, monkeypatch, capsys):
    argv = [*documented_commands()[1], "--sink", "qdrant:http://qdrant.internal:6333"]
    _, job, printed = dry_run(argv, model_cache, monkeypatch=monkeypatch, capsys=capsys)
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert {"FitSink", "SyncSink", "SyncSink/Sync"} <= names
    assert "FitSink" in printed.splitlines()[1] and "SyncSink" in printed.splitlines()[1]
