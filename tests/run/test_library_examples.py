"""The library examples of README.md and docs/library.md read every stage's dead letter, and
run as written (a tiny model and a local corpus standing in for theirs): the rows a reader
rejects come out of the dead letter, not silently nowhere."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_corpus

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "library.md"
README = ROOT / "README.md"


def pipelines(page: Path = DOC) -> list[str]:
    """The python blocks of ``page`` that read documents with ReadDocuments."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    return [b for b in blocks if "ReadDocuments(" in b]


def test_every_example_reads_the_readers_and_the_models_dead_letter():
    found = pipelines() + pipelines(README)
    assert len(found) >= 3
    for block in found:
        reader = re.search(r"(\w+) = p \| ReadDocuments\(", block).group(1)
        model = re.search(r"(\w+) = \w+\[\"documents\"\] \| \w+Documents\(", block).group(1)
        assert f'{reader}["dead_letter"]' in block and f'{model}["dead_letter"]' in block, block


def _run(block: str, replacements: dict[str, str], monkeypatch, tmp_path) -> str:
    for old, new in replacements.items():
        assert old in block, old  # the example changed: update the stand-ins
        block = block.replace(old, new)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, str(DOC), "exec"), {"__name__": "example"})  # noqa: S102
    return printed.getvalue()


@pytest.fixture
def corpus(tmp_path) -> str:
    return write_corpus(tmp_path / "demo" / "p.parquet",
                        {"id": ["a", "b", "c"], "text": ["open a file", None, "read a line"]})


def test_the_embed_example_prints_results_and_the_readers_dead_letter(corpus, tiny_model,
                                                                     monkeypatch, tmp_path):
    block = pipelines()[0]
    printed = _run(block, {"ModelSpec()": f"ModelSpec(uri={tiny_model('bert', 'base')!r})"},
                   monkeypatch, tmp_path)
    assert "Row(id='b', stage='read', reason='null_text')" in printed
    assert printed.count("n_tokens=") == 2


def test_the_readme_example_prints_the_readers_dead_letter(corpus, tiny_model, monkeypatch,
                                                          tmp_path):
    printed = _run(pipelines(README)[0],
                   {"ModelSpec()": f"ModelSpec(uri={tiny_model('bert', 'base')!r})"},
                   monkeypatch, tmp_path)
    assert "Row(id='b', stage='read', reason='null_text')" in printed


def test_the_label_example_writes_every_dead_letter(corpus, tiny_model, monkeypatch, tmp_path):
    block = next(b for b in pipelines() if "InferDocuments(task" in b)
    _run(block, {"gs://my-bucket/models/sentiment": tiny_model("bert", "classify"),
                 "gs://my-bucket/corpus/*.parquet": "demo/*.parquet",
                 "gs://my-bucket/out/": str(tmp_path / "out")}, monkeypatch, tmp_path)
    dead = pq.read_table(next((tmp_path / "out").glob("dead_letter-*.parquet"))).to_pylist()
    assert [(d["id"], d["reason"]) for d in dead] == [("b", "null_text")]
