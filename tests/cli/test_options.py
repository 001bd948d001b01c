"""bertbeam's flags as Beam pipeline options: one parser for bertbeam's flags and Beam's,
one-line errors for bad values, ``--help`` with bertbeam's options in their own groups, and
the options in the pipeline's options (a Dataflow job shows them)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
)

import bertbeam
from bertbeam.cli import embed, label
from bertbeam.cli.options import JobOptions, LabelOptions
from tests.conftest import run_cli

ROOT = Path(bertbeam.__file__).resolve().parents[1]
JOB = ["--input", "in/*.parquet", "--output", "out"]


@pytest.mark.parametrize(("argv", "message"), [
    (["embed", *JOB, "--threads", "-1"], "argument --threads: expected a positive integer, got '-1'"),
    (["embed", *JOB, "--threads", "0"], "argument --threads: expected a positive integer, got '0'"),
    (["embed", *JOB, "--threads", "two"], "argument --threads: expected a positive integer, got 'two'"),
    (["label", *JOB, "--task", "sentiment"], "argument --task: invalid choice: 'sentiment'"),
    (["embed", *JOB, "--token-budget", "0"], "argument --token-budget: expected a positive integer"),
    (["embed", *JOB, "--cpu-streams", "0"], "expected a positive integer or 'auto', got '0'"),
    (["embed", *JOB, "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["embed", *JOB, "--log-level", "loud"], "argument --log-level: invalid choice: 'LOUD'"),
    (["embed", *JOB, "--max-dead-letter-fraction", "2"], "expected a fraction between 0 and 1"),
    (["embed", *JOB, "--prompt", "a", "--prompt-name", "b"], "not allowed with argument"),
    (["embed", "--output", "out"], "the following arguments are required: --input"),
    (["label", *JOB], "the following arguments are required: --task"),
    (["embed", *JOB, "stray"], "unrecognized arguments: stray"),
    (["check-gpu", "--probes", "0"], "argument --probes: expected a positive integer, got '0'"),
    (["index", "build", "--embeddings", "x", "--output", "y", "--m", "0"],
     "argument --m: expected a positive integer"),
    (["index"], "the following arguments are required: command"),
    (["report"], "the following arguments are required: output"),
], ids=["threads-negative", "threads-zero", "threads-word", "unknown-task", "budget-zero",
        "streams-zero", "device", "log-level", "fraction", "two-prompts", "no-input", "no-task",
        "stray", "probes", "index-m", "index-no-subcommand", "report-no-output"])
def test_a_bad_flag_value_is_one_line_and_exit_2(capsys, argv, message):
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # no usage block before it
    assert err.startswith("bertbeam") and "error: " in err and message in err, err


def test_threads_zero_is_refused_not_taken_for_the_default():
    with pytest.raises(ValueError, match="--threads: expected a positive integer, got '0'"):
        embed.make_job([*JOB, "--threads", "0"])
    job, _ = embed.make_job([*JOB, "--threads", "3"])
    assert job.run.model.num_threads == 3


@pytest.fixture(autouse=True)
def _wide_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # argparse wraps help at the terminal's width


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command, "--help")
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["embed", "label", "check-gpu"])
def test_help_lists_bertbeams_options_in_their_pipeline_options_groups(capsys, command):
    """bertbeam's flags are listed under the PipelineOptions class that declares them; Beam's
    are accepted but not listed (the epilog names them); each default is shown once."""
    text = _help(command, capsys)
    groups = re.findall(r"^(\S.*\(\w+Options\b.*\)):$", text, flags=re.M)
    assert groups, text
    if command != "check-gpu":
        job = text.index("bertbeam job options (JobOptions, Beam pipeline options):")
        assert job < text.index("  --token-budget") and job < text.index("  --model")
    assert "  --runner" not in text and "Other flags are Beam pipeline options" in " ".join(text.split())
    entries = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    for entry in entries:
        for part in entry.split("; "):  # label's task options: one default per task
            assert part.count("(default") <= 1, entry


def test_embed_help_names_the_embedded_model_once(capsys):
    text = " ".join(_help("embed", capsys).split())
    assert text.count("(default: embedded:all-MiniLM-L6-v2)") == 1
    assert "(default: auto = min(threads, 4))" in text and "(default: auto)" not in text.split(
        "--cpu-streams", 1)[1].split("--model-cache-dir")[0]


def test_the_jobs_pipeline_options_hold_bertbeams_options():
    """The options a job runs with are Beam's and bertbeam's in one PipelineOptions: what a
    Dataflow job records and shows (its get_all_options)."""
    job, options = label.make_job([*JOB, "--task", "classify", "--model", "m",
                                   "--token-budget", "512", "--direct_num_workers=2"])
    everything = options.get_all_options()
    assert (everything["task"], everything["model"], everything["token_budget"]) == (
        "classify", "m", 512)
    assert options.view_as(LabelOptions).task == "classify"
    assert options.view_as(JobOptions).token_budget == job.run.batch.token_budget == 512
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert job.control.options["beam"] == ["--direct_num_workers=2"]
    assert job.control.options["bertbeam"]["token_budget"] == 512


def test_zero_shot_labels_are_not_a_dataflow_jobs_labels():
    """Beam's --labels are a Dataflow job's labels; bertbeam label's are the zero-shot labels
    (``candidate_labels`` among the pipeline's options). embed leaves --labels to Beam."""
    job, options = label.make_job([*JOB, "--task", "zero-shot", "--labels", "sports,politics"])
    assert tuple(job.task.labels) == ("sports", "politics")
    assert options.view_as(GoogleCloudOptions).labels is None
    assert options.view_as(LabelOptions).candidate_labels == "sports,politics"
    _, options = embed.make_job([*JOB, "--labels", "team=nlp"])
    assert options.view_as(GoogleCloudOptions).labels == ["team=nlp"]


def test_other_pipelines_are_unaffected_by_bertbeams_options():
    """Beam reads any pipeline's options with every PipelineOptions class: bertbeam's must
    not clash with Beam's flags, nor require a flag of pipelines that are not bertbeam's."""
    everything = PipelineOptions(["--runner", "DirectRunner"]).get_all_options()
    assert everything["runner"] == "DirectRunner"
    assert everything["input"] is None and everything["task"] is None
    assert everything["token_budget"] == 8192


def _python_files() -> list[Path]:
    return [*(ROOT / "bertbeam").rglob("*.py"), *(ROOT / "pipelines").glob("*.py"),
            *(ROOT / "benchmarks").glob("*.py")]


def test_no_source_uses_beams_private_parser():
    private = "_Beam" + "ArgumentParser"
    assert [p for p in _python_files() if private in p.read_text()] == []


def test_the_launcher_reads_no_argv():
    """``bertbeam.run`` takes ready options: argparse lives in ``bertbeam.cli``."""
    offenders = []
    for path in (ROOT / "bertbeam" / "run").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n and n.split(".")[0] == "argparse"]
    assert offenders == []


def test_index_has_build_and_search_subcommands_and_search_its_short_name():
    from bertbeam.cli.index import _build, _search, index_parser, search_parser

    build = index_parser().parse_args(["build", "--embeddings", "e/*.parquet", "--output", "i"])
    assert (build.work, build.m, build.embeddings) == (_build, 16, "e/*.parquet")
    long = index_parser().parse_args(["search", "--index", "i", "a query", "-k", "3"])
    short = search_parser().parse_args(["--index", "i", "a query", "-k", "3"])
    assert long.work is short.work is _search
    assert vars(long) == {**vars(short), "command": "search"}
