"""ValidateDocuments and the checks the read path shares with it."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from bertbeam import Document, ValidateDocuments
from bertbeam.beam.validation import check_document, text_or_reason


@pytest.mark.parametrize(("value", "reason"), [
    (None, "null_text"), ("", "empty_text"), (" \t\n", "empty_text"), ("\x00\x01", "empty_text"),
    (b"\xff\xfe", "invalid_utf8"), ("a\ud800", "invalid_utf8"), (3, "not_a_string"),
    (["a"], "not_a_string"),
], ids=["none", "empty", "blank", "controls", "bad-bytes", "surrogate", "int", "list"])
def test_unusable_texts_get_their_reason(value, reason):
    assert text_or_reason(value) == (None, reason)


def test_usable_texts_and_ids():
    assert text_or_reason(b"caf\xc3\xa9") == ("café", None)
    assert check_document(12, "text") == Document("12", "text")
    assert check_document("q", "question?", "context", with_pair=True) == Document(
        "q", "question?", "context")
    assert check_document("q", "question?", None, with_pair=True).reason == "null_text"
    assert check_document(" ", "text").reason == "missing_id"


def test_validate_documents_keeps_one_of_each_id_the_same_on_every_run():
    docs = [Document("a", "zebra"), Document("a", "apple"), Document("b", "fine"),
            Document("c", ""), "not a document"]
    with TestPipeline() as p:
        out = p | beam.Create(docs) | ValidateDocuments()
        assert_that(out["documents"] | beam.Map(lambda d: (d.id, d.text)),
                    equal_to([("a", "apple"), ("b", "fine")]), label="Kept")
        assert_that(out["dead_letter"] | beam.Map(lambda d: (d.id, d.reason)),
                    equal_to([("a", "duplicate_id"), ("c", "empty_text"), (None, "not_a_string")]),
                    label="Dead")


def test_without_dedupe_nothing_is_shuffled():
    from apache_beam.portability import common_urns

    p = beam.Pipeline()
    _ = p | beam.Create([Document("a", "x")]) | "Validate" >> ValidateDocuments(dedupe=False)
    urns = [t.spec.urn for t in p.to_runner_api().components.transforms.values()
            if t.unique_name.startswith("Validate/")]
    assert urns and common_urns.primitives.GROUP_BY_KEY.urn not in urns


def test_read_documents_in_chunks_checks_rows_as_one_by_one(tmp_path):
    """ReadDocuments(chunk_size=N) gives DocumentChunks of at most N documents holding exactly
    the documents (ids, texts, carried values) the per-document read gives, and the same dead
    letters."""
    from bertbeam import Columns, ReadDocuments
    from bertbeam.core.records import DocumentChunk
    from bertbeam.run.runners import resolve_runner
    from tests.conftest import write_corpus

    ids = [f"d{i}" for i in range(10)] + ["d3", None]
    texts = [f"text {i}" for i in range(10)] + ["again", "no id"]
    texts[5] = "  "
    write_corpus(tmp_path / "in.parquet", {"id": ids, "text": texts, "n": list(range(12))},
                 row_group_size=4)
    columns = Columns(carry=("n",))
    options = beam.options.pipeline_options.PipelineOptions()

    def check(chunk_size):
        with TestPipeline(runner=resolve_runner(options), options=options) as p:
            read = p | ReadDocuments(str(tmp_path / "*.parquet"), columns, chunk_size=chunk_size)

            def flat(element):
                if isinstance(element, DocumentChunk):
                    assert len(element) <= 3
                    return [element.document(i) for i in range(len(element))]
                return [element]

            docs = read["documents"] | beam.FlatMap(flat) | beam.Map(
                lambda d: (d.id, d.text, d.extra["n"]))
            dead = read["dead_letter"] | beam.Map(lambda d: (d.id, d.reason))
            assert_that(docs, equal_to([(i, t, n) for n, (i, t) in enumerate(zip(ids, texts, strict=True))
                                        if n < 10 and n != 5]), label="Docs")
            assert_that(dead, equal_to([("d5", "empty_text"), ("d3", "duplicate_id"),
                                        (None, "missing_id")]), label="Dead")

    check(None)
    check(3)
