"""Dead-letter limits: a run where most rows fail exits 4 with one line naming the top reasons,
after writing and accounting for every row; a corpus with a few bad rows passes."""

from __future__ import annotations

import pytest

from tests.conftest import read_output, read_summary, run_cli, write_corpus


def _corpus(path, n: int, bad: int) -> str:
    texts = [None if i < bad else f"document number {i} about rivers" for i in range(n)]
    return write_corpus(path / "in" / "p.parquet", {"id": [f"d{i}" for i in range(n)], "text": texts})


def _run(tmp_path, corpus, tiny_model, *flags) -> int:
    return run_cli("embed", "--input", corpus, "--output", tmp_path / "out", "--quiet",
                   "--no-report", "--model", tiny_model("bert", "base"), *flags)


@pytest.mark.parametrize("wait", [True, False], ids=["waited", "no-wait"])
def test_most_rows_dead_lettered_exits_4_after_writing_everything(tmp_path, tiny_model, capsys, wait):
    corpus = _corpus(tmp_path, 10, 6)
    tiny_model("bert", "base")
    capsys.readouterr()  # the fixture's own output
    assert _run(tmp_path, corpus, tiny_model, *([] if wait else ["--no-wait"])) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("bertbeam: error: 6 of 10 rows dead-lettered (60.0%), over "
                             "--max-dead-letter-fraction 0.25; top reasons: null_text 6;")
    summary = read_summary(tmp_path / "out")
    assert summary["verdict"] == "too_many_dead_letters"
    assert summary["dead_letter_fraction"] == 0.6
    assert summary["accounted"] and summary["computed"] == 4 and summary["dead_lettered"] == 6
    assert len(read_output(tmp_path / "out")) == 4
    assert len(read_output(tmp_path / "out", "dead_letter")) == 6


def test_one_percent_bad_rows_pass_by_default(tmp_path, tiny_model):
    corpus = _corpus(tmp_path, 100, 1)
    assert _run(tmp_path, corpus, tiny_model) == 0
    summary = read_summary(tmp_path / "out")
    assert (summary["verdict"], summary["dead_letter_fraction"], summary["dead_lettered"]) == (
        "passed", 0.01, 1)
    assert summary["max_dead_letter_fraction"] == 0.25 and summary["max_dead_letters"] is None


def test_limits_are_flags(tmp_path, tiny_model, capsys):
    corpus = _corpus(tmp_path, 10, 6)
    assert _run(tmp_path, corpus, tiny_model, "--max-dead-letter-fraction", "1") == 0
    assert read_summary(tmp_path / "out")["verdict"] == "passed"
    assert _run(tmp_path, corpus, tiny_model, "--max-dead-letter-fraction", "1",
                "--max-dead-letters", "5") == 4
    assert "over --max-dead-letters 5;" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--max-dead-letter-fraction", "1.5"),
                                         ("--max-dead-letter-fraction", "x"),
                                         ("--max-dead-letters", "-1")])
def test_bad_limits_are_refused(tmp_path, tiny_model, capsys, flag, value):
    corpus = _corpus(tmp_path, 2, 0)
    tiny_model("bert", "base")
    capsys.readouterr()  # the fixture's own output
    assert _run(tmp_path, corpus, tiny_model, flag, value) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and len(err.splitlines()) == 1, err
