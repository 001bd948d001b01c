"""The transforms on windowed, unbounded input: a TestStream of documents in three fixed
windows gives, window by window, the results of a batch run over the same documents, each
row in its document's window and at its timestamp; dead letters keep their window."""

from __future__ import annotations

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

from bertbeam import Document, EmbedDocuments, InferDocuments, LabelDocuments, ModelSpec, RunSpec
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
