"""README's Flex Template recipe, checked offline: the Dockerfile, the metadata's parameters,
and the documented ``gcloud dataflow flex-template run`` built as the Dataflow job the
template's launcher would submit (``--dry_run=True``), through ``pipelines/flex_template.py``."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import apache_beam as beam
import pytest

from pipelines.flex_template import flex_argv
from pipelines.flex_template import main as flex_main
from tests.conftest import SAMPLE_TEXTS, run_cli, write_corpus
from tests.integration.test_dataflow_graph import SHELL_VARS, job_environment, unpickle_dofns
from tests.integration.test_docker import _hadolint, args_of, instructions

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile.flex"
METADATA = ROOT / "docker" / "flex-template-metadata.json"
VARS = {**SHELL_VARS, "FLEX_IMAGE": "us-central1-docker.pkg.dev/my-project/bertbeam/bertbeam-flex:0.1.0"}
# What the template launcher passes to the Python file for gcloud's own flags.
GCLOUD_FLAGS = {"--region": "--region", "--temp-location": "--temp_location",
                "--worker-machine-type": "--machine_type", "--max-workers": "--max_num_workers"}


def documented_flex_run() -> list[str]:
    """The README's ``gcloud dataflow flex-template run`` command, variables expanded."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("gcloud dataflow flex-template run"):
                expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: VARS[m.group(1)], line)
                return shlex.split(expanded)
    raise AssertionError("README documents no `gcloud dataflow flex-template run` command")


def launcher_argv(gcloud: list[str]) -> list[str]:
    """The flags the template launcher gives pipelines/flex_template.py for ``gcloud``."""
    argv = [f"--job_name={gcloud[4]}", "--runner=DataflowRunner", f"--project={VARS['PROJECT']}"]
    args = iter(gcloud[5:])
    for flag in args:
        value = next(args)
        if flag == "--parameters":
            argv += [f"--{pair}" for pair in value.split(",")]
        elif flag in GCLOUD_FLAGS:
            argv.append(f"{GCLOUD_FLAGS[flag]}={value}")
        else:
            assert flag == "--template-file-gcs-location", flag
    return argv


def test_dockerfile_adds_the_launcher_to_a_worker_image():
    proc = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ops = instructions(DOCKERFILE)
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for op, a in ops if op == "ENV")))
    script = env["FLEX_TEMPLATE_PYTHON_PY_FILE"]
    # The worker images install pipelines/ at /src/pipelines.
    assert script.startswith("/src/") and (ROOT / script.removeprefix("/src/")).exists()
    for worker in ("Dockerfile.gpu", "Dockerfile.cpu"):
        assert ("COPY", "pipelines /src/pipelines") in instructions(ROOT / "docker" / worker)
        python = args_of(ROOT / "docker" / worker)["PYTHON_VERSION"]
        assert args_of(DOCKERFILE)["PYTHON_VERSION"] == python.replace(".", "")
    assert ("COPY", "--from=launcher /opt/google/dataflow/python_template_launcher "
                    "/opt/google/dataflow/python_template_launcher") in ops
    assert not [a for op, a in ops if op == "ENTRYPOINT"]  # the worker's boot entrypoint stays


def test_metadata_parameters_are_flags_of_the_commands():
    from bertbeam.cli import embed, label

    metadata = json.loads(METADATA.read_text())
    flags = {o for p in (embed.parser(), label.parser()) for a in p._actions for o in a.option_strings}
    names = [p["name"] for p in metadata["parameters"]]
    assert {"input", "output", "previous"} <= set(names)
    for name in names:
        assert name == "command" or f"--{name}" in flags, name
    required = {p["name"] for p in metadata["parameters"] if not p.get("isOptional")}
    assert required == {"input", "output"}


def test_flex_argv_adds_no_wait_and_the_command():
    assert flex_argv(["--input=x", "--command=label", "--task=ner"]) == [
        "label", "--input=x", "--task=ner", "--no-wait"]
    assert flex_argv(["--input=x"])[0] == "embed"
    with pytest.raises(ValueError, match="Invalid --command: 'index'"):
        flex_argv(["--command", "index"])


def test_the_documented_flex_run_builds_a_dataflow_job(tmp_path, tiny_model, monkeypatch, capsys):
    """The launcher's argv for README's command: a --no-wait label job with the Dataflow
    options it names, joined with the previous run, ending in the summary stage; every DoFn
    unpickles."""
    model = tiny_model("bert", "classify")
    ids = [f"d{i}" for i in range(len(SAMPLE_TEXTS))]
    corpus = write_corpus(tmp_path / "in" / "p.parquet", {"id": ids, "text": SAMPLE_TEXTS})
    local = {"input": corpus, "output": str(tmp_path / "out"), "model": model,
             "previous": str(tmp_path / "previous")}
    assert run_cli("label", "--task", "classify", "--input", corpus, "--output",
                   local["previous"], "--model", model, "--threads", "1", "--quiet") == 0
    argv = []
    for arg in launcher_argv(documented_flex_run()):
        name = arg[2:].split("=", 1)[0]
        if name in local:
            assert arg.split("=", 1)[1].startswith("gs://"), arg
            arg = f"--{name}={local[name]}"
        argv.append(arg)
    built = []
    original = beam.Pipeline.run

    def run(self, *args, **kwargs):
        built.append((self.options, original(self, *args, **kwargs)))
        return built[-1][1]

    monkeypatch.setattr(beam.Pipeline, "run", run)
    assert flex_main([*argv, "--dry_run=True"]) == 0
    assert "submitted; the job writes" in capsys.readouterr().err
    options, result = built[-1]
    job = result.job
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert {"JoinPrevious", "Infer/RunModel", "WriteResults", "WriteSummary"} <= names
    assert unpickle_dofns(job.proto_pipeline) >= 10
    pool = job_environment(options, job).worker_pools[0]
    assert pool.machine_type == "n2-standard-8"
    assert pool.worker_harness_container_image == VARS["FLEX_IMAGE"]
    assert pool.autoscaling_settings.max_num_workers == 16
