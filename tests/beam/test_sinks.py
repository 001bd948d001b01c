"""``bertbeam embed --sink``: a Milvus Lite or Qdrant local collection kept exactly in sync
with the results over nightly reruns (upserts of computed rows, deletes of ids that left the
corpus, read back after the write), rows the collection cannot take dead-lettered, and the
launch checks that refuse a location, a schema or a runner in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bertbeam.beam.sinks import MilvusSink, QdrantSink, parse_sink, point_id
from tests.conftest import read_output, read_summary, run_cli, write_corpus
from tests.run.test_run_metadata import validate

pytest.importorskip("pymilvus")
pytest.importorskip("qdrant_client")

SMALL = (200, 10, 6, 4)  # documents on night 1; removed, changed, added on night 2
ISSUE = (1000, 50, 30, 20)  # issue 25's case (slow)


def _corpus(path, ids: list[str], texts: dict[str, str]) -> str:
    return write_corpus(path / "corpus.parquet", {"id": ids, "text": [texts[i] for i in ids]},
                        row_group_size=64)


def _texts(n: int) -> dict[str, str]:
    words = ["river", "mountain", "python", "list", "loop", "file", "class", "error", "cloud", "tree"]
    return {f"doc-{i:05d}": f"{words[i % 10]} {words[(i // 10) % 10]} number {i} of the corpus"
            for i in range(n)}


def _sink(kind: str, tmp_path):
    return (MilvusSink(uri=str(tmp_path / "vectors.db"), collection="docs") if kind == "milvus"
            else QdrantSink(location=str(tmp_path / "qdrant"), collection="docs"))


def _flag(sink) -> list[str]:
    where = sink.uri if isinstance(sink, MilvusSink) else sink.location
    return ["--sink", f"{sink.kind}:{where}", "--sink-collection", sink.collection]


def _stored(sink) -> tuple[int, dict[str, str | None]]:
    client = sink.client()
    try:
        return sink.stored(client)
    finally:
        sink.close(client)


def _vectors(sink, ids: list[str]) -> dict[str, np.ndarray]:
    client = sink.client()
    try:
        if isinstance(sink, MilvusSink):
            rows = client.get(sink.collection, ids=ids, output_fields=["id", "embedding"])
            return {r["id"]: np.asarray(r["embedding"]) for r in rows}
        points = client.retrieve(sink.collection, ids=[point_id(i) for i in ids],
                                 with_payload=True, with_vectors=True)
        return {p.payload["id"]: np.asarray(p.vector["dense"]) for p in points}
    finally:
        sink.close(client)


def _nightly(tmp_path, sink, model: str, sizes: tuple[int, int, int, int]
             ) -> tuple[list[str], dict[str, str]]:
    """Night 1 (all documents) and night 2 (the first ``removed`` gone, the next ``changed``
    edited, ``added`` new)."""
    n_docs, removed, changed, added = sizes
    texts = _texts(n_docs + added)
    ids1 = list(texts)[:n_docs]
    common = ["--model", model, "--quiet", "--no-report", *_flag(sink)]
    assert run_cli("embed", "--input", _corpus(tmp_path / "in1", ids1, texts),
                   "--output", tmp_path / "night1", *common) == 0
    ids2 = ids1[removed:] + list(texts)[n_docs:]
    for doc_id in ids2[:changed]:
        texts[doc_id] += " (edited)"
    corpus2 = _corpus(tmp_path / "in2", ids2, texts)
    assert run_cli("embed", "--input", corpus2, "--output", tmp_path / "night2",
                   "--previous", tmp_path / "night1", *common) == 0
    return ids2, texts


@pytest.mark.parametrize("sizes", [SMALL, pytest.param(ISSUE, marks=pytest.mark.slow)],
                         ids=["200", "1000"])
@pytest.mark.parametrize("kind", ["milvus", "qdrant"])
def test_nightly_sync_holds_exactly_the_current_documents(tmp_path, tiny_model, kind, sizes):
    """After night 2 the collection holds exactly its ids, with night 2's vectors; the
    summary says removed and computed (changed + added) as they were."""
    sink = _sink(kind, tmp_path)
    _, REMOVED, CHANGED, ADDED = sizes  # noqa: N806
    ids2, _ = _nightly(tmp_path, sink, tiny_model("bert", "base"), sizes)
    summary = read_summary(tmp_path / "night2")
    validate(summary)
    assert (summary["removed"], summary["computed"], summary["carried_forward"]) == (
        REMOVED, CHANGED + ADDED, len(ids2) - CHANGED - ADDED)
    assert summary["since_previous"]["changed"]["count"] == CHANGED
    assert summary["since_previous"]["added"]["count"] == ADDED
    assert summary["since_previous"]["removed"]["examples"] == [f"doc-{i:05d}" for i in range(5)]
    assert summary["sink"] == {"kind": kind, "location": str(
        tmp_path / ("vectors.db" if kind == "milvus" else "qdrant")), "collection": "docs",
        "points": len(ids2), "leftovers_deleted": 0, "verified": True}
    count, stored = _stored(sink)
    results = {r["id"]: r for r in read_output(tmp_path / "night2")}
    assert count == len(ids2) and set(stored) == set(ids2) == set(results)
    assert all(stored[i] == results[i]["text_fingerprint"] for i in ids2)
    changed = ids2[:CHANGED] + ids2[-ADDED:]
    for doc_id, vector in _vectors(sink, changed).items():
        np.testing.assert_allclose(vector, results[doc_id]["embedding"], atol=1e-5)


_KILLER = """
import os, signal, sys
from bertbeam.beam import sinks
real = sinks.{cls}.upsert
def upsert(self, client, rows):
    real(self, client, rows[: len(rows) // 2])
    os.kill(os.getpid(), signal.SIGKILL)  # half a batch written, then the machine is gone
sinks.{cls}.upsert = upsert
from bertbeam.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("kind", ["milvus", "qdrant"])
def test_a_run_killed_mid_write_and_run_again_leaves_one_point_per_document(tmp_path, tiny_model,
                                                                             kind):
    sink = _sink(kind, tmp_path)
    model = tiny_model("bert", "base")
    texts = _texts(SMALL[0])
    ids = list(texts)
    corpus = _corpus(tmp_path / "in", ids, texts)
    args = ["embed", "--input", corpus, "--output", str(tmp_path / "out"), "--model", model,
            "--quiet", "--no-report", *_flag(sink)]
    killer = _KILLER.format(cls=type(sink).__name__)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    killed = subprocess.run([sys.executable, "-c", killer, *args], env=env, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert 0 < _stored(sink)[0] < len(ids)
    assert run_cli(*args) == 0
    count, stored = _stored(sink)
    assert count == len(ids) and set(stored) == set(ids)
    assert read_summary(tmp_path / "out")["sink"]["verified"] is True


def test_rows_the_collection_cannot_take_are_dead_lettered(tmp_path, tiny_model):
    """An id over Milvus' 1,024 bytes and a kept text over 65,535: dead letter, reason
    sink_limit, not in the results nor the collection; the rest are written."""
    sink = _sink("milvus", tmp_path)
    long_id, long_text = "x" * 1100, "word " * 14000
    corpus = write_corpus(tmp_path / "c.parquet", {
        "id": ["ok-1", long_id, "ok-2", "long-text"],
        "text": ["a river", "a mountain", "a tree", long_text]})
    assert run_cli("embed", "--input", corpus, "--output", tmp_path / "out", "--quiet",
                   "--no-report", "--keep-text", "--model", tiny_model("bert", "base"),
                   "--max-dead-letter-fraction", "1", *_flag(sink)) == 0
    dead = {r["id"]: r for r in read_output(tmp_path / "out", "dead_letter")}
    assert set(dead) == {long_id, "long-text"}
    assert {(r["stage"], r["reason"]) for r in dead.values()} == {("sink", "sink_limit")}
    assert "limit of 1024 bytes" in dead[long_id]["message"]
    assert {r["id"] for r in read_output(tmp_path / "out")} == {"ok-1", "ok-2"}
    assert set(_stored(sink)[1]) == {"ok-1", "ok-2"}
    summary = read_summary(tmp_path / "out")
    assert summary["accounted"] and summary["dead_letter_reasons"] == {"sink_limit": 2}


@pytest.mark.parametrize("kind", ["milvus", "qdrant"])
def test_a_collection_that_does_not_fit_is_refused_at_launch(tmp_path, tiny_model, capsys, kind):
    sink = _sink(kind, tmp_path)
    model = tiny_model("bert", "base")
    corpus = write_corpus(tmp_path / "c.parquet", {"id": ["a", "b"], "text": ["a river", "a tree"]})
    base = ["embed", "--input", corpus, "--model", model, "--quiet", "--no-report", *_flag(sink)]
    assert run_cli(*base, "--output", tmp_path / "o1") == 0  # made without text
    capsys.readouterr()
    assert run_cli(*base, "--output", tmp_path / "o2", "--keep-text") == 2
    err = capsys.readouterr().err.strip()
    assert "was made without text, and this run keeps it (--keep-text)" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o2" / "_SUMMARY.json").exists()


@pytest.mark.parametrize("kind", ["milvus", "qdrant"])
def test_embedded_sinks_are_refused_with_multi_processing(tmp_path, tiny_model, capsys, kind):
    sink = _sink(kind, tmp_path)
    corpus = write_corpus(tmp_path / "c.parquet", {"id": ["a"], "text": ["a river"]})
    assert run_cli("embed", "--input", corpus, "--output", tmp_path / "o", "--model",
                   tiny_model("bert", "base"), *_flag(sink), "--direct_num_workers=2",
                   "--direct_running_mode=multi_processing") == 2
    err = capsys.readouterr().err
    assert "one process opens at a time" in err and "Traceback" not in err


def test_unusable_milvus_lite_locations_are_one_line(tmp_path, tiny_model, capsys):
    corpus = write_corpus(tmp_path / "c.parquet", {"id": ["a"], "text": ["a river"]})
    model = tiny_model("bert", "base")
    (tmp_path / "afile").write_text("x")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pymilvus import MilvusClient; "
        f"MilvusClient(uri={str(tmp_path / 'held.db')!r}); print('ready', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        cases = {tmp_path / "afile" / "v.db": "which is a file",
                 tmp_path / "held.db": "is held by another process"}
        if os.geteuid() != 0:  # root writes anywhere
            cases[readonly / "v.db"] = "is not writable"
        for where, message in cases.items():
            capsys.readouterr()
            assert run_cli("embed", "--input", corpus, "--output", tmp_path / "o", "--model",
                           model, "--sink", f"milvus:{where}") == 2, where
            err = capsys.readouterr().err.strip()
            assert message in err and len(err.splitlines()) == 1, err
    finally:
        holder.kill()
        holder.wait()


def test_sink_flags_are_checked(tmp_path, capsys):
    with pytest.raises(ValueError, match="Valid forms are: milvus:PATH.db"):
        parse_sink("pinecone:/tmp/x")
    with pytest.raises(ValueError, match="neither a Milvus Lite path"):
        parse_sink("milvus:/tmp/x.sqlite")
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        MilvusSink(uri="x.db", collection="my-docs")
    assert parse_sink("milvus:http://host:19530", "docs") == MilvusSink(uri="http://host:19530",
                                                                        collection="docs")
    assert parse_sink("qdrant:/data/q", "docs") == QdrantSink(location="/data/q", collection="docs")
    assert point_id("doc-001849") == point_id("doc-001849") != point_id("doc-001850")
    assert json.dumps(point_id("x")).count("-") == 4  # a UUID, as Qdrant requires
    corpus = write_corpus(tmp_path / "c.parquet", {"id": ["a"], "text": ["b"]})
    assert run_cli("embed", "--input", corpus, "--output", tmp_path / "o", "--sink", "pinecone:x") == 2
    err = capsys.readouterr().err
    assert "Invalid --sink 'pinecone:x'" in err and "Traceback" not in err


def test_a_first_sink_run_with_previous_writes_the_carried_rows_too(tmp_path, tiny_model):
    """Night 1 had no --sink; night 2 adds one: the collection is empty at launch, so the
    carried rows are written as well as the computed ones."""
    sink = _sink("qdrant", tmp_path)
    texts = _texts(30)
    ids = list(texts)
    corpus = _corpus(tmp_path / "in", ids, texts)
    model = ["--model", tiny_model("bert", "base"), "--quiet", "--no-report"]
    assert run_cli("embed", "--input", corpus, "--output", tmp_path / "night1", *model) == 0
    texts[ids[0]] += " (edited)"
    corpus2 = _corpus(tmp_path / "in2", ids, texts)
    assert run_cli("embed", "--input", corpus2, "--output", tmp_path / "night2", *model,
                   "--previous", tmp_path / "night1", *_flag(sink)) == 0
    summary = read_summary(tmp_path / "night2")
    assert (summary["computed"], summary["carried_forward"], summary["removed"]) == (1, 29, 0)
    count, stored = _stored(sink)
    assert count == 30 and set(stored) == set(ids)
    results = {r["id"]: r for r in read_output(tmp_path / "night2")}
    assert all(stored[i] == results[i]["text_fingerprint"] for i in ids)
