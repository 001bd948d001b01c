"""``_SUMMARY.json`` run metadata: valid against the shipped JSON Schema, the same whether the
launcher waits for the pipeline or the pipeline writes it itself (``--no-wait``)."""

from __future__ import annotations

import copy
import re
from datetime import datetime

import numpy as np
import pytest

from tests.conftest import SAMPLE_TEXTS, read_output, read_summary, run_cli, write_corpus

TIMING = {"run_id", "started_at", "finished_at", "pipeline_seconds", "process_seconds",
          "wall_seconds", "docs_per_second", "tokens_per_second", "throughput", "throughput_read",
          "output"}


def validate(summary: dict) -> None:
    import jsonschema

    from bertbeam.run.runinfo import summary_schema

    jsonschema.validate(summary, summary_schema(),
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    ids = [f"d{i}" for i in range(len(SAMPLE_TEXTS) + 1)]
    return write_corpus(tmp_path_factory.mktemp("meta") / "in" / "p.parquet",
                        {"id": ids, "text": [*SAMPLE_TEXTS, None]}, row_group_size=4)


def _comparable(summary: dict) -> dict:
    out = {k: v for k, v in summary.items() if k not in TIMING}
    out["options"] = copy.deepcopy(out["options"])
    for key in ("output", "wait"):
        out["options"]["bertbeam"].pop(key)
    return out


def test_no_wait_writes_the_same_summary_as_a_waited_run(tmp_path, tiny_model, corpus):
    """With --no-wait the pipeline's last stage writes _SUMMARY.json (and the report) after
    the outputs are committed; on the local runner it equals the launcher's summary, except
    for timings and the output location."""
    model = ["--model", tiny_model("bert", "base"), "--token-budget", "256", "--quiet",
             "--threads", "2"]
    assert run_cli("embed", "--input", corpus, "--output", tmp_path / "waited", *model) == 0
    assert run_cli("embed", "--input", corpus, "--output", tmp_path / "no-wait", "--no-wait",
                   *model) == 0
    waited, no_wait = read_summary(tmp_path / "waited"), read_summary(tmp_path / "no-wait")
    validate(waited)
    validate(no_wait)
    assert no_wait["options"]["bertbeam"]["wait"] is False
    assert _comparable(no_wait) == _comparable(waited)
    assert waited["windows"] == waited["computed"] == len(SAMPLE_TEXTS)  # counters, not None
    assert (tmp_path / "no-wait" / "_REPORT.html").exists()
    rows = {r["id"]: r for r in read_output(tmp_path / "no-wait")}
    for row in read_output(tmp_path / "waited"):
        np.testing.assert_allclose(rows[row["id"]]["embedding"], row["embedding"], atol=1e-6)


def test_summary_metadata(tmp_path, tiny_model, corpus):
    """Versions, UTC timestamps, process and pipeline seconds, locations, the model and its
    fingerprint, device, dtype, dimension and every option."""
    model = tiny_model("bert", "base")
    assert run_cli("embed", "--input", corpus, "--output", tmp_path, "--model", model,
                   "--quiet", "--threads", "1", "--cpu-streams", "1") == 0
    summary = read_summary(tmp_path)
    validate(summary)
    assert summary["schema_version"] == 3
    assert set(summary["versions"]) >= {"bertbeam", "apache_beam", "torch", "transformers", "python"}
    started = datetime.fromisoformat(summary["started_at"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(summary["finished_at"].replace("Z", "+00:00"))
    assert started.utcoffset().total_seconds() == 0
    # The process started before the pipeline: start-up and preflight are in process_seconds.
    assert (finished - started).total_seconds() == pytest.approx(summary["process_seconds"], abs=0.01)
    assert summary["process_seconds"] > summary["pipeline_seconds"] == summary["wall_seconds"]
    assert (summary["input"], summary["output"], summary["previous"]) == (corpus, str(tmp_path), [])
    assert (summary["device"], summary["dtype"], summary["threads"], summary["streams"]) == (
        "cpu", "float32", 1, 1)
    assert summary["embedding_dimension"] == 32
    assert re.fullmatch(r"[0-9a-f]{16}", summary["model_fingerprint"])
    rows = read_output(tmp_path)
    assert {r["model_fingerprint"] for r in rows} == {summary["model_fingerprint"]}
    assert {r["job_fingerprint"] for r in rows} == {summary["job_fingerprint"]}
    assert summary["options"]["bertbeam"]["threads"] == 1
    assert summary["runner"] == "DirectRunner" and summary["job_id"] is None


def test_the_schema_rejects_a_summary_that_breaks_it(tmp_path, tiny_model, corpus):
    """The schema is not vacuous: a missing field or a wrong type fails validation."""
    import jsonschema

    assert run_cli("embed", "--input", corpus, "--output", tmp_path, "--quiet",
                   "--model", tiny_model("bert", "base"), "--no-report") == 0
    summary = read_summary(tmp_path)
    for broken in ({k: v for k, v in summary.items() if k != "carried_forward"},
                   {**summary, "computed": -1}, {**summary, "started_at": "yesterday"},
                   {**summary, "model_fingerprint": "sha256:1"}):
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)


@pytest.mark.parametrize("wait", [True, False], ids=["waited", "no-wait"])
def test_rows_missing_from_the_accounting_exit_3(tmp_path, tiny_model, corpus, monkeypatch,
                                                capsys, wait):
    """read != computed + carried_forward + dead_lettered (here: one row more in the footers
    than the pipeline saw) is exit status 3, with the summary written to say so."""
    from bertbeam.beam import reading

    # The launcher counts the footers once (the progress total and the summary's ``read``).
    from bertbeam.run import job

    real = reading.count_input_rows
    for module in (reading, job):  # wherever the launcher takes it from
        if hasattr(module, "count_input_rows"):
            monkeypatch.setattr(module, "count_input_rows", lambda pattern: real(pattern) + 1)
    code = run_cli("embed", "--input", corpus, "--output", tmp_path, "--quiet", "--no-report",
                   "--model", tiny_model("bert", "base"), *([] if wait else ["--no-wait"]))
    assert code == 3
    assert "12 rows read but 10 computed + 0 carried forward + 1 dead-lettered" in (
        capsys.readouterr().err)
    assert read_summary(tmp_path)["accounted"] is False


def test_process_seconds_are_bertbeams_own_under_an_execing_shell(tmp_path):
    """``bash -c "sleep 3 && exec bertbeam ..."`` (cron, Airflow) runs bertbeam in the shell's
    process: the kernel's start time is the shell's, 3 s too early; the start is then when
    bertbeam was imported."""
    import subprocess
    import sys

    code = "from bertbeam.run.runinfo import process_started; print(process_started())"
    out = subprocess.run(["bash", "-c", f"sleep 3 && date +%s.%N && exec {sys.executable} -c '{code}'"],
                         capture_output=True, text=True, check=True, timeout=120)
    exec_at, started = map(float, out.stdout.split())
    assert 0 <= started - exec_at < 1.0, out
    # Without the shell in front, the kernel's start time (Python's start-up included) holds.
    code = ("from bertbeam.run.runinfo import _kernel_start_time, process_started; "
            "print(process_started() == _kernel_start_time())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout.strip() == "True", out
