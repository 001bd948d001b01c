"""The chunk elements' coder: Beam gets their sizes without pickling them, and they travel
between workers as they are."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
from apache_beam.coders import typecoders
from apache_beam.typehints import native_type_compatibility

from bertbeam.core.records import (
    BatchPlan,
    Document,
    DocumentChunk,
    OutputChunk,
    RecordCoder,
    WindowChunk,
    estimated_bytes,
)


def _windows() -> WindowChunk:
    docs = DocumentChunk(["a", "b"], ["one two", "three four five"])
    return WindowChunk(docs=docs, input_ids=np.arange(7, dtype=np.int32),
                       starts=np.array([0, 3, 7]), doc=np.array([0, 1], np.int32),
                       index=np.zeros(2, np.int32), n_windows=np.ones(2, np.int32),
                       truncated=np.zeros(2, bool))


def test_beam_encodes_chunks_and_their_unions_with_the_record_coder():
    registry = typecoders.registry
    for t in (DocumentChunk, WindowChunk, BatchPlan, OutputChunk, pa.RecordBatch):
        assert isinstance(registry.get_coder(t), RecordCoder), t
    union = native_type_compatibility.convert_to_beam_type(Document | DocumentChunk)
    assert isinstance(registry.get_coder(union), RecordCoder)
    assert not isinstance(registry.get_coder(native_type_compatibility.convert_to_beam_type(int | str)),
                          RecordCoder)


def test_sizes_come_from_the_arrays_not_from_pickling(monkeypatch):
    windows = _windows()
    plan = BatchPlan(windows, [np.array([1, 0])], [4])
    out = OutputChunk(windows, {"embedding": np.zeros((2, 8), np.float32)}, {})
    batch = pa.record_batch({"id": ["a", "b"], "x": [1.0, 2.0]})

    def no_pickling(*args, **kwargs):
        raise AssertionError("pickled to size an element")

    sizes = {}
    with monkeypatch.context() as m:
        m.setattr(pickle, "dumps", no_pickling)
        for value in (windows.docs, windows, plan, out, batch, Document("a", "text")):
            sizes[type(value).__name__] = RecordCoder().get_impl().estimate_size(value)
    assert sizes["DocumentChunk"] >= len("one two") + len("three four five")
    assert sizes["WindowChunk"] >= sizes["DocumentChunk"] + windows.input_ids.nbytes
    assert sizes["OutputChunk"] >= sizes["WindowChunk"] + 64
    assert sizes["RecordBatch"] == batch.get_total_buffer_size()
    # A large chunk is sized from a sample of its texts, near the whole.
    texts = [("x" * (i % 97)) for i in range(5000)]
    whole = sum(map(len, texts))
    assert abs(estimated_bytes(DocumentChunk([str(i) for i in range(5000)], texts))
               - 48 * 5000 - whole) < 0.05 * whole
    # A malformed value (a Document whose text is None) is sized by pickling it.
    assert estimated_bytes(Document("a", None)) == len(pickle.dumps(Document("a", None), protocol=5))


def test_chunks_round_trip_through_the_coder():
    coder = RecordCoder()
    windows = _windows()
    back = coder.decode(coder.encode(windows))
    assert back.docs.texts == windows.docs.texts
    np.testing.assert_array_equal(back.input_ids, windows.input_ids)
    batch = pa.record_batch({"id": ["a"]})
    assert coder.decode(coder.encode(batch)).equals(batch)
