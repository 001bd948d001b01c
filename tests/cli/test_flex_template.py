"""The Flex Template recipe of docs/dataflow.md, checked offline: the Dockerfile, the metadata's parameters,
and the documented ``gcloud dataflow flex-template run`` built as the Dataflow job the
template's launcher would submit (``--dry_run=True``), through ``pipelines/flex_template.py``."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from pipelines.flex_template import flex_argv
from pipelines.flex_template import main as flex_main
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
    """docs/dataflow.md's ``gcloud dataflow flex-template run`` command, variables expanded."""
    text = (ROOT / "docs" / "dataflow.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("gcloud dataflow flex-template run"):
                expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: VARS[m.group(1)], line)
                return shlex.split(expanded)
    raise AssertionError("docs/dataflow.md documents no `gcloud dataflow flex-template run` command")


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


def test_metadata_declares_every_option_one_to_one():
    """The metadata's parameters are bertbeam's pipeline options, one each by attribute name
    (and ``command``), as pipelines/flex_template.py derives them: an option added, renamed
    or removed without writing the metadata again fails here."""
    from bertbeam.cli.options import EmbedOptions, JobOptions, LabelOptions, option_actions
    from pipelines.flex_template import FIXED, metadata, render_metadata

    on_file = json.loads(METADATA.read_text())
    names = [p["name"] for p in on_file["parameters"]]
    assert len(names) == len(set(names))
    options = set(option_actions((JobOptions, EmbedOptions, LabelOptions)))
    again = ("write the metadata again: python -c 'from pipelines.flex_template import "
             "write_metadata; write_metadata()'")
    assert set(names) == options - set(FIXED) | {"command"}, again
    assert on_file == metadata() and METADATA.read_text() == render_metadata(), again
    required = {p["name"] for p in on_file["parameters"] if not p.get("isOptional")}
    assert required == {"input", "output"}
    by_name = {p["name"]: p for p in on_file["parameters"]}
    assert by_name["task"]["regexes"] == ["^(classify|ner|qa|fill\\-mask|zero\\-shot)$"]
    assert by_name["threads"]["regexes"] == ["^[1-9][0-9]*$"]
    assert by_name["report"]["regexes"] == ["^(true|false)$"]


def test_every_parameter_value_the_metadata_accepts_parses():
    """A value each parameter's regexes accept is a value its flag takes."""
    from bertbeam.cli import label

    samples = {"^(true|false)$": "true", "^[1-9][0-9]*$": "3", "^([1-9][0-9]*|auto)$": "auto",
               "^[0-9]+$": "0", "^-?[0-9]+$": "4", "^gs://.+": "gs://b/x"}
    argv = []
    for param in json.loads(METADATA.read_text())["parameters"]:
        if (param["name"] in ("command", "task", "labels_file", "question_column", "context_column")
                or param["helpText"].startswith("embed: ")):
            continue  # the command itself, another task's or another command's options
        regex = (param.get("regexes") or [""])[0]
        value = samples.get(regex) or ("0.5" if "." in regex else regex[2:].split("|")[0].split(")")[0]
                                       if regex.startswith("^(") else "x")
        assert re.fullmatch(regex or ".*", value), (param["name"], value)
        argv.append(f"--{param['name']}={value}")
    argv = [a for a in flex_argv(["--command=label", "--task=zero-shot", *argv]) if a != "--no-wait"]
    args, _ = label.parse_command(label.parser(), label.OPTIONS, argv[1:])
    assert (args.task, args.keep_text, args.threads, args.cpu_streams) == ("zero-shot", True, 3, "auto")


def test_flex_argv_adds_no_wait_and_the_command():
    assert flex_argv(["--input=x", "--command=label", "--task=ner"]) == [
        "label", "--input=x", "--task=ner", "--no-wait"]
    assert flex_argv(["--input=x"])[0] == "embed"
    with pytest.raises(ValueError, match="Invalid --command: 'index'"):
        flex_argv(["--command", "index"])


def test_flex_argv_maps_parameters_to_their_flags():
    """A parameter is its option's attribute name; a switch takes true or false."""
    assert flex_argv(["--token_budget=512", "--keep_text=true", "--report=false",
                      "--multi_label=false", "--quiet=false", "--sdk_location=container"]) == [
        "embed", "--token-budget=512", "--keep-text", "--no-report", "--sdk_location=container",
        "--no-wait"]
    with pytest.raises(ValueError, match="keep_text='yes': the parameter takes true or false"):
        flex_argv(["--keep_text=yes"])


def test_the_documented_flex_run_builds_a_dataflow_job(tmp_path, tiny_model, monkeypatch, capsys):
    """The launcher's argv for the documented command, as written (gs:// locations, no bucket
    reachable): a --no-wait label job with the Dataflow options it names, joined with the
    previous run, ending in the summary stage; it says what it checked (never "submitted");
    every DoFn unpickles."""
    from tests.integration.test_dataflow_graph import (
        CLOSED_PORT,
        cache_model,
        record_pipeline_runs,
    )

    gcloud = documented_flex_run()
    model_uri = next(p.split("model=", 1)[1].split(",")[0] for p in gcloud if "model=" in p)
    cache_model(model_uri, tiny_model("bert", "classify"), str(tmp_path / "cache"))
    argv = [*launcher_argv(gcloud), f"--model_cache_dir={tmp_path / 'cache'}"]
    built = record_pipeline_runs(monkeypatch)
    # The local stand-ins for the documented gs:// locations pass the remote-runner check.
    monkeypatch.setattr("bertbeam.run.checks.check_remote_locations", lambda *a, **k: None,
                        raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", CLOSED_PORT)  # a touched bucket would fail
    capsys.readouterr()
    assert flex_main([*argv, "--dry_run=True"]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("bertbeam classify: dry run of DataflowRunner: the job was "
                                  "built, not submitted (no input read, no bucket touched).")
    assert "WriteSummary" in printed.out and "submitted;" not in printed.out + printed.err
    options, result = built[-1]
    job = result.job
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert {"JoinPrevious", "Infer/RunModel", "WriteResults", "WriteSummary"} <= names
    assert unpickle_dofns(job.proto_pipeline) >= 10
    env = job_environment(options, job)
    pool = env.worker_pools[0]
    assert pool.machine_type == "n2-standard-8"
    assert pool.worker_harness_container_image == VARS["FLEX_IMAGE"]
    assert pool.autoscaling_settings.max_num_workers == 16
    # bertbeam's options are the job's pipeline options, as Dataflow records them.
    recorded = env.sdk_pipeline_options["options"]
    assert (recorded["task"], recorded["model"], recorded["token_budget"]) == (
        "classify", model_uri, 8192)
