"""The dead letter as a type: one reason table (docs/reliability.md's), typed rows, previews."""

from __future__ import annotations

import re
from pathlib import Path

import apache_beam as beam
import pyarrow as pa

from bertbeam.core.deadletter import (
    DEAD_LETTER_SCHEMA,
    PREVIEW_CHARS,
    REASONS,
    DeadLetter,
    Reason,
    Stage,
)
from bertbeam.core.records import rows_to_table

REASON_TABLE = Path(__file__).parents[2] / "docs" / "reliability.md"


def test_every_reason_has_a_stage_and_a_meaning():
    assert set(REASONS) == set(Reason)
    assert all(isinstance(stage, Stage) and meaning for stage, meaning in REASONS.values())


def test_readme_documents_exactly_the_reason_table():
    rows = re.findall(r"^\| `(\w+)` \| ([\w, ]+) \|", REASON_TABLE.read_text(), flags=re.MULTILINE)
    assert rows, "docs/reliability.md has no reason table"
    # The first stage listed is the one that reports the reason by default.
    documented = {code: stages.split(",")[0].strip() for code, stages in rows}
    assert documented == {r.value: stage.value for r, (stage, _) in REASONS.items()}


def test_of_fills_stage_message_and_a_bounded_preview():
    dead = DeadLetter.of(7, Reason.NAN_OUTPUT, value="x" * 500)
    assert (dead.id, dead.stage, dead.reason) == ("7", "model", "nan_output")
    assert dead.message == REASONS[Reason.NAN_OUTPUT][1]
    assert dead.preview == "x" * PREVIEW_CHARS
    assert DeadLetter.of(None, Reason.NOT_A_STRING, value=[1, 2]).preview == "[1, 2]"
    assert DeadLetter.of("a", Reason.NULL_TEXT).preview == ""
    # Lone surrogates cannot be written as UTF-8: the preview replaces them.
    assert DeadLetter.of("a", Reason.INVALID_UTF8, value="a\ud800b").preview == "a?b"


def test_dead_letters_are_schema_rows_and_write_with_the_arrow_schema():
    dead = DeadLetter.of("a", Reason.EMPTY_TEXT, value=" ")
    coder = beam.coders.registry.get_coder(DeadLetter)
    assert isinstance(coder, beam.coders.RowCoder)
    assert coder.decode(coder.encode(dead)) == dead
    table = rows_to_table([dead], DEAD_LETTER_SCHEMA)
    assert table.schema == DEAD_LETTER_SCHEMA
    assert table.to_pylist() == [dead._asdict()]
    assert DEAD_LETTER_SCHEMA.names == list(DeadLetter._fields)
    assert DEAD_LETTER_SCHEMA.field("id").type == pa.string()
