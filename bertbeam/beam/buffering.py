"""A DoFn that gathers elements and hands them over in groups, for the stages that work on
many elements at once (tokenizer calls, length-sorted batching, Parquet files)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows


class BufferedDoFn(beam.DoFn):
    """Holds elements until their :meth:`weight` reaches ``capacity`` and passes them to
    ``flush`` then and at the end of each bundle. ``flush`` may yield main outputs and
    ``TaggedOutput``s.

    Outputs of the end-of-bundle flush go to the global window: this is the batch path, whose
    elements all live there. On windowed or unbounded input the stages wrap it in
    ``windowing.PerWindowBuffer`` (one buffer per window, flushed after ``max_wait`` too).
    """

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._buffer: list[Any] = []
        self._held = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def flush(self, items: list[Any]) -> Iterator[Any]:
        raise NotImplementedError

    def weight(self, element: Any) -> int:
        """How much of the capacity ``element`` takes: 1 unless a subclass says otherwise
        (a chunk of many documents, say)."""
        return 1

    def start_bundle(self) -> None:
        self._buffer = []
        self._held = 0

    def process(self, element: Any) -> Iterator[Any]:
        self._buffer.append(element)
        self._held += self.weight(element)
        if self._held >= self._capacity:
            yield from self._drain()

    def finish_bundle(self) -> Iterator[Any]:
        for out in self._drain():
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
            else:
                yield GlobalWindows.windowed_value(out)

    def _drain(self) -> Iterator[Any]:
        items, self._buffer, self._held = self._buffer, [], 0
        if items:
            yield from self.flush(items)
