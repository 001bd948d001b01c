"""The element types that flow between stages, and their Arrow conversion.

Between the stages, documents travel in chunks, columnar:
DocumentChunk -> WindowChunk (packed token arrays) -> BatchPlan (length-sorted batches over
them) -> OutputChunk (the model's outputs, one row per window or token) -> result columns,
written as Arrow record batches. One Python object per document exists only at the edges:
:class:`Document` in, a ``beam.Row`` of the task's columns out (``InferDocuments``), and
:class:`Window` / :class:`WindowOutput` views for the tasks whose post-processing reads one
document at a time. Bad inputs leave the flow as :class:`bertbeam.core.deadletter.DeadLetter`
records.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.typehints import typehints
from apache_beam.typehints.row_type import RowTypeConstraint

from bertbeam.core.deadletter import PREVIEW_CHARS, DeadLetter


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
class WindowOutput:
    """A window's model output, reduced by the task on the device.

    ``values`` holds the window's rows of the chunk's output arrays (views: these objects
    are built for a task's per-document post-processing and dropped right after it).
    """

    window: Window
    values: dict[str, np.ndarray]
    error: DeadLetter | None = None  # set when the model step failed for this window


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``starts[0], starts[0] + 1, ..., starts[0] + lengths[0] - 1, starts[1], ...``: the
    positions of several runs of a packed array, run after run, in one vectorized step."""
    begin = np.cumsum(lengths) - lengths
    return np.repeat(starts, lengths) + (np.arange(int(lengths.sum())) - np.repeat(begin, lengths))


@dataclass(slots=True)
class DocumentChunk:
    """Many documents, column by column: what Tokenize takes in one tokenizer call."""

    ids: list[str]
    texts: list[str]
    text_pairs: list[str] | None = None
    extra: dict[str, list[Any]] | None = None  # carried column -> one value per document

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, docs: Sequence[Document]) -> DocumentChunk:
        """The chunk of ``docs`` (their ``extra`` columns are those of the first document)."""
        pairs = [d.text_pair for d in docs] if docs and docs[0].text_pair is not None else None
        names = list(docs[0].extra or {}) if docs else []
        extra = {c: [(d.extra or {}).get(c) for d in docs] for c in names} if names else None
        return cls([d.id for d in docs], [d.text for d in docs], pairs, extra)

    def document(self, i: int) -> Document:
        return Document(self.ids[i], self.texts[i],
                        self.text_pairs[i] if self.text_pairs is not None else None,
                        {c: v[i] for c, v in self.extra.items()} if self.extra else None)

    def take(self, rows: Sequence[int]) -> DocumentChunk:
        """The documents at ``rows``, in that order."""
        return DocumentChunk(
            [self.ids[i] for i in rows], [self.texts[i] for i in rows],
            [self.text_pairs[i] for i in rows] if self.text_pairs is not None else None,
            {c: [v[i] for i in rows] for c, v in self.extra.items()} if self.extra else None)

    @staticmethod
    def concat(chunks: Sequence[DocumentChunk]) -> DocumentChunk:
        first = chunks[0]
        return DocumentChunk(
            [x for c in chunks for x in c.ids], [x for c in chunks for x in c.texts],
            [x for c in chunks for x in c.text_pairs] if first.text_pairs is not None else None,
            {k: [x for c in chunks for x in c.extra[k]] for k in first.extra} if first.extra else None)


@dataclass(slots=True)
class WindowChunk:
    """The windows of a DocumentChunk, packed: every window's tokens end to end.

    Window ``j`` holds tokens ``starts[j]:starts[j + 1]`` of the flat arrays and belongs to
    document ``doc[j]`` of ``docs``; a document's windows are consecutive and in order.
    Documents that became dead letters in the tokenizer have no windows.
    """

    docs: DocumentChunk
    input_ids: np.ndarray  # int32 [tokens]
    starts: np.ndarray  # int64 [windows + 1]
    doc: np.ndarray  # int32 [windows]: index into docs
    index: np.ndarray  # int32 [windows]: window number within its document
    n_windows: np.ndarray  # int32 [windows]: windows of its document
    truncated: np.ndarray  # bool [windows]: its document was cut to its first window
    type_ids: np.ndarray | None = None  # int8 [tokens]
    offsets: np.ndarray | None = None  # int32 [tokens, 2]
    sequence_ids: np.ndarray | None = None  # int8 [tokens]: -1 special, 0 first text, 1 second

    def __len__(self) -> int:
        return len(self.doc)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def preview(self, window: int) -> str:
        return self.docs.texts[int(self.doc[window])][:PREVIEW_CHARS]

    def window(self, j: int, *, text: bool = False) -> Window:
        """Window ``j`` as a :class:`Window` (views of the packed arrays)."""
        a, b = int(self.starts[j]), int(self.starts[j + 1])
        d, index = int(self.doc[j]), int(self.index[j])
        docs = self.docs
        first = index == 0
        return Window(
            doc_id=docs.ids[d], index=index, n_windows=int(self.n_windows[j]),
            input_ids=self.input_ids[a:b],
            type_ids=self.type_ids[a:b] if self.type_ids is not None else None,
            offsets=self.offsets[a:b] if self.offsets is not None else None,
            sequence_ids=self.sequence_ids[a:b] if self.sequence_ids is not None else None,
            truncated=bool(self.truncated[j]), preview=self.preview(j),
            extra={c: v[d] for c, v in docs.extra.items()} if docs.extra and first else None,
            text=docs.texts[d] if text and first else None,
            text_pair=(docs.text_pairs[d] if text and first and docs.text_pairs is not None
                       else None))

    def token_rows(self, windows: np.ndarray) -> np.ndarray:
        """The positions in the packed arrays of the tokens of ``windows``, in order."""
        return ranges(self.starts[windows], self.lengths[windows])

    def take(self, windows: np.ndarray) -> WindowChunk:
        """The chunk of ``windows`` only (ascending window numbers; same documents)."""
        tokens = self.token_rows(windows)

        def sub(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[tokens]

        return WindowChunk(
            docs=self.docs, input_ids=self.input_ids[tokens],
            starts=np.concatenate([[0], np.cumsum(self.lengths[windows])]).astype(np.int64),
            doc=self.doc[windows], index=self.index[windows], n_windows=self.n_windows[windows],
            truncated=self.truncated[windows], type_ids=sub(self.type_ids),
            offsets=sub(self.offsets), sequence_ids=sub(self.sequence_ids))

    @staticmethod
    def concat(chunks: Sequence[WindowChunk]) -> WindowChunk:
        """One chunk of all windows of ``chunks``, in order."""
        if len(chunks) == 1:
            return chunks[0]
        doc_base = np.cumsum([0] + [len(c.docs) for c in chunks[:-1]])
        token_base = np.cumsum([0] + [int(c.starts[-1]) for c in chunks[:-1]])
        first = chunks[0]

        def cat(name: str) -> np.ndarray | None:
            if getattr(first, name) is None:
                return None
            return np.concatenate([getattr(c, name) for c in chunks])

        return WindowChunk(
            docs=DocumentChunk.concat([c.docs for c in chunks]),
            input_ids=cat("input_ids"),
            starts=np.concatenate([[0]] + [c.starts[1:] + base
                                           for c, base in zip(chunks, token_base, strict=True)]),
            doc=np.concatenate([c.doc + base for c, base in zip(chunks, doc_base, strict=True)]
                               ).astype(np.int32),
            index=cat("index"), n_windows=cat("n_windows"), truncated=cat("truncated"),
            type_ids=cat("type_ids"), offsets=cat("offsets"), sequence_ids=cat("sequence_ids"))


@dataclass(slots=True)
class BatchPlan:
    """Windows cut into model batches: ``batches[k]`` holds the window numbers of batch
    ``k`` (longest first), padded to ``padded[k]`` tokens."""

    windows: WindowChunk
    batches: list[np.ndarray]
    padded: list[int]


@dataclass(slots=True)
class OutputChunk:
    """The model's outputs for a chunk of windows, in window order.

    ``values[k]`` has one row per window (pooled outputs) or, for the task's token-level
    keys, one row per token, aligned with ``windows.input_ids``. A window the model failed
    on has its DeadLetter in ``errors`` (window number -> DeadLetter) and undefined values.
    """

    windows: WindowChunk
    values: dict[str, np.ndarray]
    errors: dict[int, DeadLetter]


@dataclass(slots=True)
class ChunkOutputs:
    """What a task's post-processing sees: the outputs of the windows of many documents.

    Document ``g`` has windows ``first[g]`` to ``first[g] + count[g] - 1`` of ``out``;
    documents whose windows failed are not among them.
    """

    out: OutputChunk
    first: np.ndarray  # int64 [documents]
    count: np.ndarray  # int64 [documents]
    token_level: tuple[str, ...] = ()
    needs_text: bool = False

    def __len__(self) -> int:
        return len(self.first)

    @property
    def window_rows(self) -> np.ndarray:
        """The window numbers of every document, document after document."""
        return ranges(self.first, self.count)

    @property
    def segments(self) -> np.ndarray:
        """Where each document starts in :attr:`window_rows` (for ``np.ufunc.reduceat``)."""
        return np.cumsum(self.count) - self.count

    def outputs(self, g: int) -> list[WindowOutput]:
        """Document ``g``'s windows as WindowOutputs (views), for per-document post-processing."""
        out, windows = self.out, self.out.windows
        result = []
        for j in range(int(self.first[g]), int(self.first[g] + self.count[g])):
            a, b = int(windows.starts[j]), int(windows.starts[j + 1])
            values = {k: v[a:b] if k in self.token_level else v[j] for k, v in out.values.items()}
            result.append(WindowOutput(windows.window(j, text=self.needs_text), values))
        return result


@dataclass(slots=True)
class Results:
    """Result columns of the documents of a chunk that came through (``id`` first, one value
    per document: lists, or numpy arrays with one row per document), and the dead letters of
    those that did not."""

    columns: dict[str, Any]
    dead: list[DeadLetter]

    def __len__(self) -> int:
        return len(self.columns["id"])

    def record_batch(self, schema: pa.Schema) -> pa.RecordBatch:
        """The results as an Arrow record batch with exactly ``schema``'s columns."""
        return columns_to_batch(self.columns, schema, len(self))

    def rows(self) -> list[dict[str, Any]]:
        """One dict per document: vectors as numpy rows with their own memory, other values
        as Python objects."""
        names = list(self.columns)
        values = [(list(c.copy()) if c.ndim > 1 else c.tolist()) if isinstance(c, np.ndarray)
                  else list(c) for c in self.columns.values()]
        return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


# -- coders: Beam's element-size sampling without a pickling per sample ---------------------


def estimated_bytes(value: Any) -> int:
    """About how many bytes ``value`` (a record of this module or an Arrow batch) holds,
    from its arrays' sizes and its texts' lengths: what Beam's byte counters want, without
    pickling the element (or by pickling it, for values of other types and malformed ones)."""
    try:
        return _estimated_bytes(value)
    except (TypeError, AttributeError):  # a Document whose text is not a string, say
        return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def _estimated_bytes(value: Any) -> int:
    if isinstance(value, pa.RecordBatch | pa.Table):
        return int(value.get_total_buffer_size())
    if isinstance(value, DocumentChunk):
        texts = _characters(value.texts) + (_characters(value.text_pairs) if value.text_pairs else 0)
        return texts + 48 * len(value.ids) * (1 + len(value.extra or ()))
    if isinstance(value, WindowChunk):
        arrays = (value.input_ids, value.starts, value.doc, value.index, value.n_windows,
                  value.truncated, value.type_ids, value.offsets, value.sequence_ids)
        return _estimated_bytes(value.docs) + sum(a.nbytes for a in arrays if a is not None)
    if isinstance(value, BatchPlan):
        return _estimated_bytes(value.windows) + 8 * len(value.windows) + 16 * len(value.batches)
    if isinstance(value, OutputChunk):
        return _estimated_bytes(value.windows) + sum(a.nbytes for a in value.values.values())
    if isinstance(value, Document):
        return 48 + len(value.text) + len(value.text_pair or "")
    raise TypeError(f"no size estimate for {type(value).__name__}")


_SIZE_SAMPLE = 64


def _characters(texts: list[str]) -> int:
    """About how many characters ``texts`` hold: every text of a small list, an even sample
    of :data:`_SIZE_SAMPLE` of a larger one (Beam sizes every element of a short stream, at
    every step: a pass over all texts each time was per-document work)."""
    n = len(texts)
    if n <= _SIZE_SAMPLE:
        return sum(map(len, texts))
    sample = texts[::n // _SIZE_SAMPLE]
    return sum(map(len, sample)) * n // len(sample)


class RecordCoder(beam.coders.Coder):
    """The coder of bertbeam's chunk elements and Arrow record batches: pickled (arrays and
    Arrow buffers pickle as raw bytes), with :func:`estimated_bytes` as the size.

    Beam samples element sizes for its byte counters by encoding elements (about 10 ln N of
    N); with the default coder that pickled whole chunks on the hot path, a few µs per
    document on the main thread (issue 24)."""

    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Any:
        return pickle.loads(encoded)

    def estimate_size(self, value: Any) -> int:
        return estimated_bytes(value)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self) -> Any:
        return Any

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    @classmethod
    def from_type_hint(cls, typehint: Any, registry: Any) -> RecordCoder:
        """The coder for a record type, or a union of them (``Document | DocumentChunk``:
        the output a function annotated so gets); a ValueError for anything else, which
        sends Beam's registry on to its other coders."""
        members = (typehint.union_types if isinstance(typehint, typehints.UnionConstraint)
                   else {typehint})
        if not all(m in RECORD_TYPES for m in members):
            raise ValueError(f"RecordCoder encodes bertbeam records and Arrow batches, not {typehint}.")
        return cls()


def columns_to_batch(columns: dict[str, Any], schema: pa.Schema, n: int) -> pa.RecordBatch:
    """An Arrow record batch of ``n`` rows from columns (lists or numpy arrays); fixed-size
    vectors go through one flat numpy array."""
    arrays = []
    for f in schema:
        values = columns[f.name]
        if pa.types.is_fixed_size_list(f.type):
            size = f.type.list_size
            flat = (np.asarray(values, dtype=np.float32).reshape(-1) if len(values)
                    else np.zeros(0, np.float32))
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, f.type.value_type), size))
        elif (pa.types.is_string(f.type) and isinstance(values, list) and values
              and isinstance(values[0], str) and values[-1] == values[0]
              and values.count(values[0]) == len(values)):
            arrays.append(pa.repeat(pa.scalar(values[0], f.type), len(values)))  # the model's URI
        else:
            arrays.append(pa.array(values, type=f.type))
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
    if batch.num_rows != n:
        raise ValueError(f"Result columns have {batch.num_rows} rows, expected {n}.")
    return batch


def rows_to_table(rows: list[Any], schema: pa.Schema) -> pa.Table:
    """Columnar conversion of result rows (dicts, ``beam.Row``s or NamedTuples such as
    DeadLetter)."""
    rows = [as_dict(row) for row in rows]
    columns = {f.name: [row[f.name] for row in rows] for f in schema}
    return pa.Table.from_batches([columns_to_batch(columns, schema, len(rows))], schema=schema)


def table_rows(table: pa.Table | pa.RecordBatch) -> list[dict]:
    """Rows of ``table`` as dicts; fixed-size vectors (embeddings) as float32 numpy rows in
    one conversion, not lists of Python floats."""
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_fixed_size_list(column.type):
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            flat = column.flatten().to_numpy(zero_copy_only=False)
            columns[name] = list(flat.reshape(len(column), column.type.list_size).astype(np.float32))
        else:
            columns[name] = column.to_pylist()
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def iter_rows(element: Any) -> Any:
    """The rows of a results element: a record batch's rows as dicts, a row as it is."""
    if isinstance(element, pa.RecordBatch | pa.Table):
        return table_rows(element)
    return [element]


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


RECORD_TYPES = (Document, DocumentChunk, WindowChunk, BatchPlan, OutputChunk, pa.RecordBatch, pa.Table)
for _type in RECORD_TYPES:
    beam.coders.registry.register_coder(_type, RecordCoder)
beam.coders.registry.register_fallback_coder(RecordCoder)  # unions of them (from_type_hint)
