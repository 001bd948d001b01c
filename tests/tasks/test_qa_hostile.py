"""QA rows that once crashed the job or answered nothing: each goes to the dead letter."""

from __future__ import annotations

import pytest

from tests.conftest import read_output, read_summary, run_cli, write_corpus

CONTEXT = "the cat sat on the mat and the dog sat on the log . " * 20


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("qa-hostile")
    rows = {
        "ok": ("where did the cat sit ?", CONTEXT),
        # Shorter than the window (64) but longer than window - 3 - stride (45), with a
        # context of several windows: the tokenizers library panics (a BaseException).
        "long-question": ("the " * 50, CONTEXT),
        # Combining accents only: not empty text, but the (lower-casing, accent-stripping)
        # tokenizer turns it into no tokens at all.
        "empty-context": ("where did the cat sit ?", "\u0301\u0301 \u0300"),
    }
    path = write_corpus(root / "qa.parquet", {"id": list(rows),
                                               "question": [q for q, _ in rows.values()],
                                               "context": [c for _, c in rows.values()]})
    code = run_cli("label", "--task", "qa", "--input", path, "--output", root / "out", "--model",
                   tiny_model("bert", "qa"), "--max-length", "64", "--stride", "16",
                   "--max-dead-letter-fraction", "1")  # a corpus of bad rows
    assert code == 0
    dead = {r["id"]: r for r in read_output(root / "out", "dead_letter")}
    return [r["id"] for r in read_output(root / "out")], dead, read_summary(root / "out")


def test_a_long_question_that_makes_the_tokenizer_panic_is_dead_lettered(qa_run):
    results, dead, summary = qa_run
    assert results == ["ok"]
    assert dead["long-question"]["stage"] == "tokenize"
    assert dead["long-question"]["reason"] == "too_long"
    assert summary["accounted"] is True and summary["read"] == 3


def test_a_context_that_tokenizes_to_nothing_is_empty_text(qa_run):
    _, dead, _ = qa_run
    assert (dead["empty-context"]["stage"], dead["empty-context"]["reason"]) == (
        "tokenize", "empty_text")
