"""The element types that flow between stages, and their Arrow conversion.

Document -> Window -> Batch -> WindowOutput -> result row (a ``beam.Row`` of the task's
columns, typed by the task's Arrow schema). Bad inputs leave the flow as
:class:`bertbeam.deadletter.DeadLetter` records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa

from bertbeam.deadletter import DeadLetter


@dataclass(slots=True)
class Document:
    """One input row: an id, the text (or question + context) to run the model on, and the
    input columns carried unchanged into its result row (``extra``: column -> value)."""

    id: str
    text: str
    text_pair: str | None = None
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class Window:
    """One model input of at most ``max_length`` tokens; a long document has several.

    ``text`` (and ``text_pair``) travel only with window 0 and only for tasks whose
    post-processing reads the text (entities, answers, fill-mask sequences).
    """

    doc_id: str
    index: int
    n_windows: int
    input_ids: np.ndarray  # int32 [length]
    type_ids: np.ndarray | None  # int8 [length]; None when the model has no token types
    offsets: np.ndarray | None  # int32 [length, 2] character offsets, when the task needs them
    sequence_ids: np.ndarray | None  # int8 [length]: -1 special token, 0 first text, 1 second
    truncated: bool = False
    preview: str = ""  # the document's first characters, for a dead letter of any stage
    extra: dict[str, Any] | None = None  # window 0 only: the document's carried columns
    text: str | None = None
    text_pair: str | None = None

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(slots=True)
class Batch:
    """Windows that run through the model together, sorted by length (longest first)."""

    windows: list[Window]
    padded_length: int

    @property
    def real_tokens(self) -> int:
        return sum(w.length for w in self.windows)

    @property
    def padded_tokens(self) -> int:
        return len(self.windows) * self.padded_length


@dataclass(slots=True)
class WindowOutput:
    """A window's model output, reduced by the task on the device.

    ``values`` holds compact numpy arrays (own memory, never views of a batch tensor),
    so that pickling one output never carries its batch.
    """

    window: Window
    values: dict[str, np.ndarray]
    error: DeadLetter | None = None  # set when the model step failed for this window


def rows_to_table(rows: list[Any], schema: pa.Schema) -> pa.Table:
    """Columnar conversion of result rows (dicts, ``beam.Row``s or NamedTuples such as
    DeadLetter); fixed-size vectors go through one numpy stack."""
    rows = [as_dict(row) for row in rows]
    arrays = []
    for f in schema:
        values = [row[f.name] for row in rows]
        if pa.types.is_fixed_size_list(f.type):
            flat = np.stack(values).astype(np.float32, copy=False).reshape(-1) if values else (
                np.zeros(0, np.float32)
            )
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), f.type.list_size))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def as_dict(value: Any) -> Any:
    """Plain Python values of a row: ``beam.Row``s and NamedTuples (nested ones too) as dicts."""
    if isinstance(value, dict):
        return value
    if isinstance(value, beam.Row):
        return {k: _plain(v) for k, v in value.as_dict().items()}
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    raise TypeError(f"Expected a result row (dict, beam.Row or NamedTuple), got {type(value).__name__}.")


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, beam.Row) or hasattr(value, "_asdict"):
        return as_dict(value)
    return value


def beam_row_type(schema: pa.Schema) -> Any:
    """The Beam schema (a ``RowTypeConstraint``) of rows with this Arrow schema, so that
    schema-aware transforms (``beam.Select``, SqlTransform, BigQuery) take them."""
    from apache_beam.typehints.row_type import RowTypeConstraint

    return RowTypeConstraint.from_fields([(f.name, _python_type(f)) for f in schema])


def _python_type(f: pa.Field) -> Any:
    t = f.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        hint: Any = str
    elif pa.types.is_boolean(t):
        hint = bool
    elif pa.types.is_int32(t):
        hint = np.int32
    elif pa.types.is_integer(t):
        hint = np.int64
    elif pa.types.is_float32(t):
        hint = np.float32
    elif pa.types.is_floating(t):
        hint = np.float64
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        hint = bytes
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        hint = Sequence[_python_type(t.value_field)]
    elif pa.types.is_struct(t):
        from apache_beam.typehints.row_type import RowTypeConstraint

        hint = RowTypeConstraint.from_fields([(c.name, _python_type(c)) for c in t])
    else:
        raise TypeError(f"No Beam schema type for Arrow type {t} (field {f.name!r}).")
    return Optional[hint] if f.nullable else hint  # noqa: UP045 - Beam reads typing.Optional


def to_beam_row(values: dict[str, Any], schema: pa.Schema) -> beam.Row:
    """A ``beam.Row`` of a result dict; struct values (and lists of them) become Rows, as
    Beam's RowCoder wants nested rows."""
    return beam.Row(**{f.name: _nested_rows(values[f.name], f.type) for f in schema})


def _nested_rows(value: Any, t: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_struct(t):
        return beam.Row(**{c.name: _nested_rows(value.get(c.name), c.type) for c in t})
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type):
        return [_nested_rows(item, t.value_type) for item in value]
    return value
