"""The element types that flow between stages, and their Arrow conversion.

Document -> Window -> Batch -> WindowOutput -> result row (a dict of task columns).
Bad inputs leave the flow as dead-letter rows (``DEAD_LETTER_SCHEMA``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

PREVIEW_CHARS = 200


@dataclass(slots=True)
class Document:
    """One input row: an id, the text (or question + context) to run the model on."""

    id: str
    text: str
    text_pair: str | None = None


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
    error: tuple[str, str] | None = None  # (reason code, message) when the model step failed


def dead_letter(doc_id: Any, stage: str, reason: str, message: str, value: Any = None) -> dict:
    """A dead-letter row: which input, where it failed, a reason code and a preview."""
    preview = value if isinstance(value, str) else ("" if value is None else repr(value))
    preview = preview[:PREVIEW_CHARS].encode("utf-8", "replace").decode("utf-8")
    return {
        "id": None if doc_id is None else str(doc_id),
        "stage": stage,
        "reason": reason,
        "message": message,
        "preview": preview,
    }


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=True),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("preview", pa.string(), nullable=False),
    ]
)


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Columnar conversion of result rows; fixed-size vectors go through one numpy stack."""
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
