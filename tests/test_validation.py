"""ValidateDocuments and the checks the read path shares with it."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from bertbeam import Document, ValidateDocuments
from bertbeam.validation import check_document, text_or_reason


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
