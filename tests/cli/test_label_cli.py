"""The ``bertbeam label`` command: end-to-end runs, the summary, and flag validation."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertbeam.cli.label import make_job
from tests.conftest import SAMPLE_TEXTS, read_output, read_summary, run_cli, write_corpus


@pytest.fixture
def corpus(tmp_path) -> tuple[str, list[str]]:
    """SAMPLE_TEXTS plus one null text (dead-lettered on read)."""
    ids = [f"d{i}" for i in range(len(SAMPLE_TEXTS) + 1)]
    path = write_corpus(tmp_path / "in" / "part-0.parquet", {"id": ids, "text": [*SAMPLE_TEXTS, None]})
    return path, ids


def _ids_accounted(output, ids: list[str]) -> tuple[set, set]:
    written = [r["id"] for r in read_output(output)]
    dead = [r["id"] for r in read_output(output, "dead_letter")]
    assert len(written) == len(set(written)) and len(dead) == len(set(dead))
    assert set(written).isdisjoint(dead)
    assert set(written) | set(dead) == set(ids)
    return set(written), set(dead)


def test_classify_end_to_end(tmp_path, tiny_model, corpus):
    """Every id is written or dead-lettered once; the schema is DESIGN's; the summary has the
    label distribution of the written rows."""
    path, ids = corpus
    out = tmp_path / "out"
    model = tiny_model("distilbert", "classify")
    assert run_cli("label", "--task", "classify", "--input", path, "--output", out,
                   "--model", model, "--top-k", "2", "--token-budget", "128") == 0
    written, dead = _ids_accounted(out, ids)
    assert dead == {ids[-1]}
    schema = pq.read_schema(sorted(out.glob("results-*.parquet"))[0])
    assert schema.names == ["id", "label", "score", "labels", "n_chunks", "truncated", "model",
                            "text_fingerprint", "model_fingerprint", "job_fingerprint", "run_id"]
    assert schema.field("labels").type == pa.list_(
        pa.struct([pa.field("label", pa.string()), pa.field("score", pa.float32())]))
    assert schema.field("score").type == pa.float32()
    rows = read_output(out)
    assert all(len(r["labels"]) == 2 and r["labels"][0]["label"] == r["label"] for r in rows)
    summary = read_summary(out)
    assert (summary["task"], summary["read"], summary["written"], summary["dead_lettered"]) == (
        "classify", len(ids), len(written), 1)
    labels = [r["label"] for r in rows]
    assert summary["label_distribution"] == {x: labels.count(x) for x in set(labels)}
    assert summary["dead_letter_reasons"] == {"null_text": 1}


def test_fill_mask_end_to_end(tmp_path, tiny_model):
    """fill-mask truncates by default; a text with no mask is dead-lettered as bad_task_input."""
    texts = ["The cat sat on the [MASK].", "Paris is the [MASK] of France.", "No mask at all."]
    path = write_corpus(tmp_path / "in" / "f.parquet", {"id": ["a", "b", "c"], "text": texts})
    out = tmp_path / "out"
    assert run_cli("label", "--task", "fill-mask", "--input", path, "--output", out,
                   "--model", tiny_model("bert", "fill-mask"), "--top-k", "4",
                   "--max-dead-letter-fraction", "1") == 0  # one row in three dead-lettered
    _ids_accounted(out, ["a", "b", "c"])
    rows = {r["id"]: r for r in read_output(out)}
    assert set(rows) == {"a", "b"}
    assert all(len(r["predictions"]) == 4 for r in rows.values())
    assert [r["reason"] for r in read_output(out, "dead_letter")] == ["bad_task_input"]
    summary = read_summary(out)
    assert summary["dead_letter_reasons"] == {"bad_task_input": 1}
    assert "label_distribution" not in summary


def _job(*argv: str):
    return make_job(["--input", "in/*.parquet", "--output", "out", *argv])


@pytest.mark.parametrize(("argv", "message"), [
    (["--task", "classify", "--aggregation", "first"],
     "--aggregation does not apply to --task classify; it is for --task ner."),
    (["--task", "ner", "--top-k", "3"],
     "--top-k does not apply to --task ner; it is for --task classify / fill-mask / zero-shot."),
    (["--task", "classify", "--labels", "a,b"],
     "--labels does not apply to --task classify; it is for --task zero-shot."),
    (["--task", "classify", "--question-column", "q"],
     "--question-column does not apply to --task classify; it is for --task qa."),
    (["--task", "classify", "--threshold", "0.3"],
     "--threshold applies with --multi-label only; add --multi-label."),
    (["--task", "classify", "--multi-label", "--top-k", "2"],
     "--top-k applies to single-label classification"),
    (["--task", "fill-mask", "--long-docs", "chunk"],
     "reads the first window of each document: use long_docs='truncate' (--long-docs truncate)"),
    (["--task", "classify", "--top-k", "0"], "top_k must be a positive integer, got 0."),
])
def test_bad_flag_combinations_fail_with_one_clear_error(argv, message):
    with pytest.raises(ValueError) as info:
        _job(*argv)
    assert message in str(info.value)


def test_bad_flags_exit_2_with_the_message(tmp_path, capsys):
    code = run_cli("label", "--task", "qa", "--input", "x", "--output", tmp_path, "--multi-label")
    assert code == 2
    assert "--multi-label does not apply to --task qa" in capsys.readouterr().err
    code = run_cli("label", "--task", "classify", "--input", "x", "--output", tmp_path, "--topk", "2")
    assert code == 2
    assert "Unknown option '--topk'" in capsys.readouterr().err


def test_jobs_carry_the_task_options_and_long_docs_defaults():
    job, options = _job("--task", "classify", "--multi-label", "--threshold", "0.2",
                        "--chunk-merge", "max", "--direct_num_workers=2")
    assert (job.task.name, job.task.multi_label, job.task.threshold, job.task.chunk_merge) == (
        "classify", True, 0.2, "max")
    assert job.run.tokenize.long_docs == "chunk"
    assert job.control.options["beam"] == ["--direct_num_workers=2"]
    assert options.get_all_options()["direct_num_workers"] == 2
    job, _ = _job("--task", "fill-mask", "--top-k", "7")
    assert (job.task.top_k, job.run.tokenize.long_docs) == (7, "truncate")
    assert (job.columns.id, job.columns.text, job.columns.text_pair) == ("id", "text", None)


def test_qa_reads_question_and_context_columns():
    pytest.importorskip("bertbeam.tasks.qa")
    job, _ = _job("--task", "qa", "--question-column", "q", "--max-answer-length", "20")
    assert (job.columns.text, job.columns.text_pair) == ("q", "context")
    assert job.task.max_answer_length == 20
    assert _job("--task", "qa")[0].task.max_answer_length == 15


def test_ner_defaults_to_simple_aggregation():
    pytest.importorskip("bertbeam.tasks.entities")
    assert _job("--task", "ner")[0].task.aggregation == "simple"
    assert _job("--task", "ner", "--aggregation", "max")[0].task.aggregation == "max"


def test_zero_shot_labels_from_flag_and_file(tmp_path):
    pytest.importorskip("bertbeam.tasks.zero_shot")
    task = _job("--task", "zero-shot", "--labels", "sports, politics", "--top-k", "2")[0].task
    assert (tuple(task.labels), task.descriptions, task.top_k) == (("sports", "politics"), None, 2)
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# topics\nsports: games and athletes\n\npolitics\n")
    task = _job("--task", "zero-shot", "--labels-file", str(labels_file))[0].task
    assert tuple(task.labels) == ("sports", "politics")
    assert tuple(task.descriptions) == ("games and athletes", None)
    with pytest.raises(ValueError, match="zero-shot needs --labels"):
        _job("--task", "zero-shot")


def test_module_entry_point_prints_help():
    done = subprocess.run([sys.executable, "-m", "bertbeam.cli.label", "--help"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0
    assert "--task {classify,ner,qa,fill-mask,zero-shot}" in done.stdout
