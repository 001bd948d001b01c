"""Tokenize: Documents to model Windows, in large vectorized tokenizer calls."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np

from bertbeam import metrics
from bertbeam.buffering import BufferedDoFn
from bertbeam.config import ModelSpec, TokenizeSpec
from bertbeam.records import Document, Window, dead_letter
from bertbeam.tasks.base import Task

_LOG = logging.getLogger(__name__)

DEAD_LETTER = "dead_letter"
_HARD_MAX_LENGTH = 512
# Models whose position ids start after the padding index (RoBERTa family): two positions fewer.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer"}


def resolve_max_length(tokenizer: Any, config: Any, local_dir: str, spec: TokenizeSpec) -> int:
    """Window length: the spec's, else sentence-transformers' or the tokenizer's, within the model."""
    from bertbeam.sentence_transformers import max_seq_length

    limit = getattr(config, "max_position_embeddings", _HARD_MAX_LENGTH)
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS:
        limit -= 2
    if spec.max_length is not None:
        if spec.max_length > limit:
            raise ValueError(f"max_length={spec.max_length} exceeds the model's limit of {limit} tokens.")
        return spec.max_length
    preferred = max_seq_length(local_dir)
    if preferred is None:
        preferred = min(int(getattr(tokenizer, "model_max_length", _HARD_MAX_LENGTH)), _HARD_MAX_LENGTH)
    return min(preferred, limit)


class _TokenizeFn(BufferedDoFn):
    """Tokenizes documents ``spec.chunk_size`` at a time, in one tokenizer call."""

    def __init__(self, model: ModelSpec, spec: TokenizeSpec, *, keep_text: bool, offsets: bool,
                 task: Task | None = None):
        super().__init__(spec.chunk_size)
        self._model = model
        self._spec = spec
        self._keep_text = keep_text
        self._offsets = offsets
        self._task = task or Task()

    def setup(self) -> None:
        from bertbeam.models import load_context

        ctx = self._ctx = load_context(self._model)
        self._tokenizer = ctx.tokenizer
        self._max_length = resolve_max_length(ctx.tokenizer, ctx.config, ctx.local_dir, self._spec)
        self._stride = self._spec.resolved_stride(self._max_length)
        self._chunk = self._spec.long_docs == "chunk"
        self._type_ids = "token_type_ids" in self._tokenizer.model_input_names

    def flush(self, docs: list[Document]) -> Iterator[Any]:
        try:
            # Materialized inside the try: a failure half-way must not leave some windows
            # emitted before the one-by-one retry emits them again.
            windows = list(self._encode(docs))
        except Exception:
            windows = None
        if windows is not None:
            yield from windows
        else:
            # One bad document must not take its neighbours down (nor, alone in its call,
            # the pipeline): retry one by one and dead-letter the ones that fail.
            for doc in docs:
                try:
                    single = list(self._encode([doc]))
                except Exception as exc:
                    # "too short to respect the provided max_length": the question of a
                    # (question, context) pair leaves no room for the context.
                    too_long = "longer than" in str(exc) or "too short to respect" in str(exc)
                    reason = "too_long" if too_long else "tokenize_error"
                    metrics.inc(metrics.DEAD_LETTERED)
                    yield beam.pvalue.TaggedOutput(
                        DEAD_LETTER, dead_letter(doc.id, "tokenize", reason, str(exc)[:500], doc.text)
                    )
                else:
                    yield from single

    def _encode(self, docs: list[Document]) -> Iterator[Window]:
        pairs = [d.text_pair for d in docs] if docs[0].text_pair is not None else None
        enc = self._tokenizer(
            self._task.prepare_texts(self._ctx, [d.text for d in docs]),
            pairs,
            truncation="only_second" if pairs else True,
            max_length=self._max_length,
            stride=self._stride if self._chunk else 0,
            return_overflowing_tokens=True,
            return_offsets_mapping=self._offsets,
            return_token_type_ids=self._type_ids and pairs is not None,
            return_attention_mask=False,
            padding=False,
        )
        mapping = np.asarray(enc["overflow_to_sample_mapping"])
        counts = np.bincount(mapping, minlength=len(docs))
        starts = np.searchsorted(mapping, np.arange(len(docs)))
        windows_out = chunked = truncated = 0
        for i, sample in enumerate(mapping):
            doc, total = docs[sample], int(counts[sample])
            index = i - int(starts[sample])
            if not self._chunk and index > 0:
                continue
            n_windows = total if self._chunk else 1
            first = index == 0
            windows_out += 1
            if first:
                chunked += n_windows > 1
                truncated += not self._chunk and total > 1
            yield Window(
                doc_id=doc.id,
                index=index,
                n_windows=n_windows,
                input_ids=np.asarray(enc["input_ids"][i], dtype=np.int32),
                type_ids=(np.asarray(enc["token_type_ids"][i], dtype=np.int8)
                          if "token_type_ids" in enc else None),
                offsets=(np.asarray(enc["offset_mapping"][i], dtype=np.int32).reshape(-1, 2)
                         if self._offsets else None),
                sequence_ids=(np.array([-1 if s is None else s for s in enc.sequence_ids(i)],
                                       dtype=np.int8) if self._offsets else None),
                truncated=not self._chunk and total > 1,
                text=doc.text if (self._keep_text and first) else None,
                text_pair=doc.text_pair if (self._keep_text and first) else None,
            )
        metrics.inc(metrics.WINDOWS, windows_out)
        metrics.inc(metrics.CHUNKED_DOCS, chunked)
        metrics.inc(metrics.TRUNCATED_DOCS, truncated)


def window_encoder(model: ModelSpec, tokenize: TokenizeSpec, *, keep_text: bool = False,
                   offsets: bool = False,
                   task: Task | None = None) -> Callable[[list[Document]], Iterator[Window]]:
    """Tokenize outside a pipeline (the RunInference handler): loads the tokenizer now and
    returns a function from Documents to their Windows, in one vectorized call, in order."""
    fn = _TokenizeFn(model, tokenize, keep_text=keep_text, offsets=offsets, task=task)
    fn.setup()
    return fn._encode


class Tokenize(beam.PTransform):
    """Document -> Window (main output) and dead-letter rows (``dead_letter`` output).

    A document longer than the window becomes several overlapping windows
    (``long_docs='chunk'``) or its first window (``'truncate'``). ``task`` may rewrite the
    texts before they are tokenized (``Task.prepare_texts``: an embedding prompt).

    Example::

        tokenized = docs | Tokenize(model=ModelSpec(), tokenize=TokenizeSpec())
        windows, bad = tokenized.windows, tokenized.dead_letter
    """

    def __init__(
        self,
        *,
        model: ModelSpec,
        tokenize: TokenizeSpec,
        keep_text: bool = False,
        offsets: bool = False,
        task: Task | None = None,
    ):
        super().__init__()
        self._fn = _TokenizeFn(model, tokenize, keep_text=keep_text, offsets=offsets, task=task)

    def expand(self, docs: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return docs | "Tokenize" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, main="windows")
