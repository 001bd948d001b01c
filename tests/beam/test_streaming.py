"""The transforms on windowed, unbounded input: a TestStream of documents in three fixed
windows gives, window by window, the results of a batch run over the same documents, each
row in its document's window and at its timestamp; dead letters keep their window."""

from __future__ import annotations

import json
import pickle
from collections import defaultdict
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from bertbeam import Document, EmbedDocuments, LabelDocuments, ModelSpec, RunSpec
from bertbeam.beam.buffering import BufferedDoFn
from bertbeam.beam.windowing import EVENT_TIME, PerWindowBuffer
from bertbeam.config import BatchSpec
from bertbeam.run.runners import resolve_runner
from tests.conftest import SAMPLE_TEXTS

WINDOW = 60  # seconds


def _stream_docs() -> list[tuple[float, Document]]:
    """(event time, document): six documents in each of three windows, with an id used in
    every window (kept in each), an id repeated inside window 1 (the later one is a dead
    letter) and a blank text in window 2."""
    texts = SAMPLE_TEXTS
    docs = []
    for w in range(3):
        for i in range(6):
            docs.append((w * WINDOW + 5 * i + 1.5, Document(f"w{w}-{i}", texts[(w * 6 + i) % len(texts)])))
        docs.append((w * WINDOW + 40.0, Document("shared", texts[w])))
    docs.append((WINDOW + 45.0, Document("w1-0", texts[6] + " (again, longer)")))
    docs.append((2 * WINDOW + 50.0, Document("blank", "   ")))
    return docs


def _test_stream(docs: list[tuple[float, Document]]) -> TestStream:
    """Window 0's documents, then windows 1 and 2 interleaved; the watermark passes window 0,
    more of windows 1 and 2 arrive, and only then (late) the watermark passes them both."""
    first = [(t, d) for t, d in docs if t < WINDOW]
    rest = sorted((x for x in docs if x[0] >= WINDOW), key=lambda x: (x[1].id, x[0]))
    stream = TestStream().advance_watermark_to(0)
    stream = stream.add_elements([TimestampedValue(d, t) for t, d in first])
    stream = stream.add_elements([TimestampedValue(d, t) for t, d in rest[: len(rest) // 2]])
    stream = stream.advance_watermark_to(WINDOW + 1)
    stream = stream.add_elements([TimestampedValue(d, t) for t, d in rest[len(rest) // 2:]])
    return stream.advance_watermark_to(3 * WINDOW + 10).advance_watermark_to_infinity()


def _dump(path: Path):
    def matcher(actual):
        path.write_bytes(pickle.dumps(list(actual)))
    return matcher


class _WithWindow(beam.DoFn):
    def process(self, row, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        yield (int(window.start), int(window.end), float(timestamp), row.id, row._asdict())


def _streamed(transform: beam.PTransform, docs, tmp_path: Path) -> tuple[list, list]:
    """Runs ``transform`` over the TestStream of ``docs`` in fixed windows; returns the result
    and dead-letter tuples (window start, window end, timestamp, id, row)."""
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(runner="BundleBasedDirectRunner", options=options) as p:
        out = (p | _test_stream(docs) | beam.WindowInto(FixedWindows(WINDOW)) | transform)
        assert_that(out["results"] | "Rows" >> beam.ParDo(_WithWindow()),
                    _dump(tmp_path / "results.pkl"), label="Results")
        assert_that(out["dead_letter"] | "Dead" >> beam.ParDo(_WithWindow()),
                    _dump(tmp_path / "dead.pkl"), label="DeadLetters")
    return (pickle.loads((tmp_path / "results.pkl").read_bytes()),
            pickle.loads((tmp_path / "dead.pkl").read_bytes()))


def _batch(make: callable, docs: list[Document], path: Path) -> dict[str, dict]:
    """The batch run (global window, the FnApiRunner) over ``docs``: id -> result row."""
    options = PipelineOptions([])
    with TestPipeline(runner=resolve_runner(options), options=options) as p:
        out = p | beam.Create(docs) | make()
        assert_that(out["results"] | beam.Map(lambda r: r._asdict()), _dump(path))
    return {row["id"]: row for row in pickle.loads(path.read_bytes())}


def _per_window_batch(make, docs, tmp_path) -> dict[int, dict[str, dict]]:
    """Window start -> the batch results over that window's documents (duplicates resolved as
    the stream resolves them: the first to arrive is the one kept)."""
    by_window: dict[int, list[Document]] = defaultdict(list)
    for t, doc in docs:
        w = int(t // WINDOW) * WINDOW
        if doc.id not in {d.id for d in by_window[w]} and doc.text.strip():
            by_window[w].append(doc)
    return {w: _batch(make, ds, tmp_path / f"batch-{w}.pkl") for w, ds in by_window.items()}


def _assert_same_as_batch(streamed, expected, docs, compare) -> None:
    times = {}
    for t, d in docs:
        times.setdefault((int(t // WINDOW) * WINDOW, d.id), t)
    got: dict[int, dict[str, dict]] = defaultdict(dict)
    for start, end, ts, doc_id, row in streamed:
        assert end - start == WINDOW
        assert ts == times[(start, doc_id)], f"{doc_id} lost its timestamp"
        assert doc_id not in got[start], f"{doc_id} twice in window {start}"
        got[start][doc_id] = row
    assert sorted(got) == [0, WINDOW, 2 * WINDOW]
    for start, rows in expected.items():
        assert sorted(got[start]) == sorted(rows), f"window {start}"
        for doc_id, row in rows.items():
            compare(got[start][doc_id], row)
    assert all(EVENT_TIME not in row for rows in got.values() for row in rows.values())


def _dead_by_window(dead) -> list[tuple[int, str | None, str]]:
    return sorted((start, row["id"], row["reason"]) for start, _, _, _, row in dead)


def test_embed_over_a_test_stream_matches_the_batch_run_window_by_window(tiny_model, tmp_path):
    run = RunSpec(model=ModelSpec(uri=tiny_model("bert", "base")))
    docs = _stream_docs()
    streamed, dead = _streamed(EmbedDocuments(run=run), docs, tmp_path)
    expected = _per_window_batch(lambda: EmbedDocuments(run=run), docs, tmp_path)

    def compare(got, want):
        np.testing.assert_allclose(np.asarray(got["embedding"]), np.asarray(want["embedding"]),
                                   rtol=1e-4, atol=1e-5)
        assert (got["n_tokens"], got["n_chunks"], got["truncated"]) == (
            want["n_tokens"], want["n_chunks"], want["truncated"])

    _assert_same_as_batch(streamed, expected, docs, compare)
    # "shared" is kept in every window; the repeat of w1-0 and the blank text are dead
    # letters in the windows they arrived in.
    assert _dead_by_window(dead) == [(WINDOW, "w1-0", "duplicate_id"),
                                     (2 * WINDOW, "blank", "empty_text")]


def test_classify_over_a_test_stream_matches_the_batch_run_window_by_window(tiny_model, tmp_path):
    run = RunSpec(model=ModelSpec(uri=tiny_model("distilbert", "classify")))
    docs = _stream_docs()
    streamed, dead = _streamed(LabelDocuments("classify", top_k=2, run=run), docs, tmp_path)
    expected = _per_window_batch(lambda: LabelDocuments("classify", top_k=2, run=run), docs,
                                 tmp_path)

    def compare(got, want):
        assert got["label"] == want["label"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert [x.label for x in got["labels"]] == [x.label for x in want["labels"]]

    _assert_same_as_batch(streamed, expected, docs, compare)
    assert _dead_by_window(dead) == [(WINDOW, "w1-0", "duplicate_id"),
                                     (2 * WINDOW, "blank", "empty_text")]


# -- the pieces: buffering per window, messages, file names ------------------------------------


class _Collect(BufferedDoFn):
    def flush(self, items):
        yield list(items)


def test_per_window_buffer_flushes_per_window_when_full_after_max_wait_and_at_bundle_end():
    """Elements of two windows never share a flush; a buffer goes when full, when its first
    element has waited max_wait, and at the end of the bundle, in its own window, at the
    earliest timestamp of its elements."""
    from apache_beam.transforms.window import IntervalWindow
    from apache_beam.utils.timestamp import Timestamp

    now = [0.0]
    fn = PerWindowBuffer(_Collect(3), max_wait=0.5, clock=lambda: now[0])
    w1, w2 = IntervalWindow(0, 60), IntervalWindow(60, 120)
    fn.setup()
    fn.start_bundle()
    out = list(fn.process("a", w1, Timestamp(5))) + list(fn.process("x", w2, Timestamp(61)))
    out += list(fn.process("b", w1, Timestamp(3)))
    assert out == []
    out = list(fn.process("c", w1, Timestamp(9)))  # w1 is full
    assert [(o.value, o.windows, o.timestamp) for o in out] == [(["a", "b", "c"], (w1,), Timestamp(3))]
    now[0] = 0.6  # x has waited past max_wait: it goes with the next element's arrival
    out = list(fn.process("d", w1, Timestamp(10)))
    assert [(o.value, o.windows) for o in out] == [(["x"], (w2,))]
    out = list(fn.finish_bundle())
    assert [(o.value, o.windows, o.timestamp) for o in out] == [(["d"], (w1,), Timestamp(10))]


def test_max_wait_is_validated():
    with pytest.raises(ValueError, match="max_wait must be a number of seconds from 0 to 60"):
        BatchSpec(max_wait=-1)
    with pytest.raises(ValueError, match="max_wait must be at least 0"):
        PerWindowBuffer(_Collect(3), max_wait=-0.1)


def test_pubsub_messages_become_documents_or_dead_letters():
    """A JSON payload gives id, text and carried fields by name; any other payload is the
    text, with the id in the attributes; a message that cannot be a document is a dead
    letter with the batch reader's reasons."""
    from bertbeam.beam.reading import Columns
    from bertbeam.beam.sources import message_document

    cols = Columns(id="id", text="body", carry=("lang",))
    doc = message_document(b'{"id": 7, "body": "hello there", "lang": "en"}', {}, cols)
    assert (doc.id, doc.text, doc.extra) == ("7", "hello there", {"lang": "en"})
    doc = message_document("plain text é".encode(), {"id": "m-1", "lang": "fr"}, cols)
    assert (doc.id, doc.text, doc.extra) == ("m-1", "plain text é", {"lang": "fr"})
    bad = [message_document(b"text without id", {}, cols),
           message_document(b'{"id": "x"}', {}, cols),
           message_document(b"\xff\xfe", {"id": "y"}, cols),
           message_document(b'{"id": "z", "body": "  "}', {}, cols),
           message_document(b'{"id": "w", "body": ', {}, cols)]
    assert [(d.id, d.reason) for d in bad] == [
        (None, "missing_id"), ("x", "missing_column"), ("y", "invalid_utf8"),
        ("z", "empty_text"), (None, "not_a_string")]


def test_stream_inputs_are_parsed_or_refused_in_one_line():
    from bertbeam.beam.sources import StreamSource

    assert StreamSource.parse("watch:gs://b/in/*.parquet") == StreamSource("watch", "gs://b/in/*.parquet")
    assert StreamSource.parse("pubsub:projects/p/subscriptions/s") == StreamSource(
        "pubsub", "projects/p/subscriptions/s")
    with pytest.raises(ValueError, match="expected 'pubsub:projects/PROJECT/subscriptions/SUB"):
        StreamSource.parse("pubsub:projects/p/topics/t")
    with pytest.raises(ValueError, match="is 'watch:GLOB'"):
        StreamSource.parse("in/*.parquet")


def test_the_pubsub_graph_builds_with_stable_step_names(tiny_model, tmp_path):
    """Pub/Sub cannot be reached here: the streaming job's graph is built (not run) with its
    update-compatible step names."""
    from bertbeam.beam.reading import Columns
    from bertbeam.run import streaming
    from bertbeam.run.job import Job
    from bertbeam.tasks.embed import EmbedTask

    job = Job(task=EmbedTask(), run=RunSpec(model=ModelSpec(uri=tiny_model("bert", "base"))),
              input="pubsub:projects/my-project/subscriptions/docs", output=str(tmp_path / "out"),
              columns=Columns())
    spec = streaming.StreamSpec(window_seconds=30)
    prepared = streaming.preflight(job, spec)
    options = PipelineOptions(["--streaming"])
    p = beam.Pipeline(options=options)
    streaming.build(p, job, prepared, spec)
    labels = {t.full_label for t in p.transforms_stack[0].parts}
    assert {"ReadDocuments", "Window", "DropRepeatedIds", "ChunkDocuments", "Tokenize",
            "BatchByTokens", "RunModel", "Postprocess", "WriteResults"} <= labels
    names = {t.full_label for t in p.transforms_stack[0].parts[0].parts}
    assert "ReadDocuments/ReadFromPubSub" in names


def _land(inbox: Path, name: str, ids: list, texts: list) -> None:
    """Writes a Parquet file beside the watched glob and renames it in: it lands whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    temp = inbox / f".{name}.tmp"
    pq.write_table(pa.table({"id": ids, "text": texts}), temp)
    temp.rename(inbox / name)


def test_watch_embeds_files_landing_while_it_runs_and_stops_on_sigint(tiny_model, tmp_path):
    """`bertbeam embed --streaming --input 'watch:DIR/*.parquet' --sink qdrant:PATH`: a file
    there at the start and one copied in while it runs are embedded; Ctrl-C (SIGINT) stops it
    with exit status 0 once every row of the files that landed is in the results or the dead
    letter, written in files per window, and every result is a point of the collection."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    import pyarrow.parquet as pq

    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    _land(inbox, "a.parquet", [f"a{i}" for i in range(12)], [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(12)])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertbeam.cli.main", "embed", "--streaming",
         "--input", f"watch:{inbox}/*.parquet", "--output", str(out),
         "--model", tiny_model("bert", "base"), "--window-seconds", "5",
         "--watch-interval", "0.5", "--drain-timeout", "60",
         "--sink", f"qdrant:{tmp_path / 'qdrant'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not list(out.glob("results-*.parquet")) and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.5)
        assert list(out.glob("results-*.parquet")), "the file there at the start was not embedded"
        _land(inbox, "b.parquet", ["b0", "b1", "b0", "b2"],
              ["a landed text", "another one", "the same id again", "   "])
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "14 written, 2 dead-lettered of 16 rows in 2 file(s)" in stdout
    results = {}
    for f in out.glob("results-*.parquet"):
        window = re.fullmatch(r"results-(\d{8}T\d{6}Z)_(\d{8}T\d{6}Z)-[0-9a-f]{16}\.parquet", f.name)
        assert window, f.name
        for row in pq.read_table(f).to_pylist():
            assert row["id"] not in results
            results[row["id"]] = row
    assert sorted(results) == sorted([f"a{i}" for i in range(12)] + ["b0", "b1"])
    dead = sorted((r["id"], r["reason"]) for f in out.glob("dead_letter-*.parquet")
                  for r in pq.read_table(f).to_pylist())
    assert dead == [("b0", "duplicate_id"), ("b2", "empty_text")]
    summary = json.loads((out / "_SUMMARY.json").read_text())
    assert (summary["read"], summary["written"], summary["dead_lettered"], summary["accounted"]) == (
        16, 14, 2, True)
    from bertbeam.beam.sinks import parse_sink

    sink = parse_sink(f"qdrant:{tmp_path / 'qdrant'}")
    client = sink.client()
    count, stored = sink.stored(client)
    sink.close(client)
    assert (count, sorted(stored)) == (14, sorted(results))


@pytest.mark.parametrize("argv,message", [
    (["--input", "watch:{d}/*.parquet"], "is unbounded: add --streaming"),
    (["--streaming", "--input", "{d}/*.parquet"], "A streaming input is 'watch:GLOB'"),
    (["--streaming", "--input", "pubsub:projects/p/topics/t"], "Invalid Pub/Sub input"),
    (["--streaming", "--input", "watch:{d}/*.parquet", "--previous", "{d}/old"],
     "--previous applies to batch runs"),
    (["--streaming", "--input", "watch:{d}/*.parquet", "--max-wait", "-1"],
     "expected a number of seconds"),
])
def test_streaming_mistakes_are_one_line_at_launch(tmp_path, capsys, argv, message):
    from tests.conftest import run_cli

    argv = [a.format(d=tmp_path) for a in argv]
    assert run_cli("embed", *argv, "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_bounded_windowed_input_keeps_windows_on_the_local_runner(tiny_model):
    """A batch corpus put in daily windows (bounded, on the FnApiRunner the commands use):
    each row comes out in its document's window at its timestamp, an id may be used once per
    window (of two, the smallest text is kept, as in a batch run), and dead letters keep
    their window."""
    from apache_beam.testing.util import equal_to

    day = 86400
    docs = [(10, Document("a", SAMPLE_TEXTS[0])), (20, Document("b", SAMPLE_TEXTS[1])),
            (day + 5, Document("a", SAMPLE_TEXTS[2])), (day + 7, Document("c", "")),
            (day + 9, Document("a", SAMPLE_TEXTS[3]))]
    kept = float(min((d.text, t) for t, d in docs if t > day and d.id == "a")[1])
    run = RunSpec(model=ModelSpec(uri=tiny_model("bert", "base")))
    options = PipelineOptions([])
    with TestPipeline(runner=resolve_runner(options), options=options) as p:
        out = (p | beam.Create([TimestampedValue(d, t) for t, d in docs])
               | beam.WindowInto(FixedWindows(day)) | EmbedDocuments(run=run))
        assert_that(out["results"] | "Rows" >> beam.ParDo(_WithWindow())
                    | "RowKeys" >> beam.Map(lambda x: (x[0], x[2], x[3])),
                    equal_to([(0, 10.0, "a"), (0, 20.0, "b"), (day, kept, "a")]),
                    label="Results")
        assert_that(out["dead_letter"] | "Dead" >> beam.ParDo(_WithWindow())
                    | "DeadKeys" >> beam.Map(lambda x: (x[0], x[3], x[4]["reason"])),
                    equal_to([(day, "c", "empty_text"), (day, "a", "duplicate_id")]),
                    label="DeadLetters")


def _dofns(windowed: bool, model: str) -> list[str]:
    p = beam.Pipeline()
    docs = p | beam.Create([Document("a", "x")])
    if windowed:
        docs = docs | beam.WindowInto(FixedWindows(60))
    _ = docs | EmbedDocuments(run=RunSpec(model=ModelSpec(uri=model)))
    names: list[str] = []

    class _Visit(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, beam.ParDo):
                names.append(type(node.transform.dofn).__name__)

    p.visit(_Visit())
    return names


def test_batch_input_keeps_the_batch_dofns(tiny_model):
    """The global window of a bounded input (every batch job) builds the batch graph: no
    per-window buffer, no event-time stamp; the same transform on windows gets them."""
    model = tiny_model("bert", "base")
    batch, windowed = _dofns(False, model), _dofns(True, model)
    assert "PerWindowBuffer" not in batch and "_StampFn" not in batch
    assert windowed.count("PerWindowBuffer") == 2 and "_StampFn" in windowed
