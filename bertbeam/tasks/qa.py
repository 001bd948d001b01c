"""Extractive question answering: the best answer span of a context, scored like
transformers' question-answering pipeline (as of transformers 4.x, its last release).

Per window: start and end logits outside the context (question, special tokens; the CLS
token excepted) are masked, each is softmaxed over the window, the CLS token's
probabilities are zeroed, and a span's score is ``p_start * p_end`` over spans with
``start <= end`` and at most ``max_answer_length`` tokens. The 12 best spans of a window
are widened to whole words; spans with the same text (case-insensitive) add up their
scores, across windows too; the best total wins.

Long contexts: every window of the context is scored this way, so the answer is the best
span over the whole context, wherever it lies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from bertbeam.config import check_positive
from bertbeam.core.records import Window, WindowOutput
from bertbeam.core.task import ID_FIELD, MODEL_FIELD, Task, option

_MASKED = -10000.0
# The pipeline keeps top_k * 2 + 10 candidates per window before aligning them to words,
# because alignment merges some of them; with top_k=1 that is 12.
_CANDIDATES = 12


@dataclass(frozen=True, kw_only=True)
class QATask(Task):
    """The answer to ``Document.text`` (the question) in ``Document.text_pair`` (the
    context): ``answer``, ``score``, ``start``, ``end`` (character offsets in the context),
    ``n_chunks``, ``model``.

    Options:
        max_answer_length: the longest answer, in tokens.
        handle_impossible_answer: allow the empty answer (``""``, offsets 0, 0) when the
            model scores "no answer" (the CLS token) above every span.
        align_to_words: widen answers to whole words, as the pipeline does by default.

    Example::

        out = docs | InferDocuments(QATask(max_answer_length=30), run=RunSpec(
            model=ModelSpec(uri="gs://models/bert-squad")))
    """

    max_answer_length: int = option(15, "the longest answer, in tokens")
    handle_impossible_answer: bool = False
    align_to_words: bool = True

    name: ClassVar[str] = "qa"
    model_class: ClassVar[str] = "AutoModelForQuestionAnswering"
    needs_text: ClassVar[bool] = True
    needs_offsets: ClassVar[bool] = True
    pair_input: ClassVar[bool] = True
    token_level: ClassVar[tuple[str, ...]] = ("start_logits", "end_logits")

    def __post_init__(self) -> None:
        check_positive("max_answer_length", self.max_answer_length)
        for name in ("handle_impossible_answer", "align_to_words"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")

    def schema(self, config: Any) -> pa.Schema:
        return pa.schema([
            ID_FIELD,
            pa.field("answer", pa.string(), nullable=False),
            pa.field("score", pa.float32(), nullable=False),
            pa.field("start", pa.int32(), nullable=False),
            pa.field("end", pa.int32(), nullable=False),
            pa.field("n_chunks", pa.int32(), nullable=False),
            MODEL_FIELD,
        ])

    def forward(self, engine: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        out = engine.model(**inputs)
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}

    def postprocess(self, engine: Any, outputs: list[WindowOutput]) -> dict[str, Any]:
        context = outputs[0].window.text_pair or ""
        words = _context_words(engine, context) if self.align_to_words else None
        answers: dict[str, dict[str, Any]] = {}  # lower-cased answer -> first span, summed score
        null_score = 1e6
        for out in outputs:
            spans, null = _window_spans(out, engine.tokenizer.cls_token_id, self.max_answer_length)
            null_score = min(null_score, null)
            token_words = _token_words(out.window, words)
            for s, e, score in spans:
                start, end = _char_span(out.window.offsets, token_words, s, e)
                text = context[start:end]
                seen = answers.get(text.lower())
                if seen is None:
                    answers[text.lower()] = {"answer": text, "score": score, "start": start, "end": end}
                else:
                    seen["score"] += score
        ranked = list(answers.values())
        if self.handle_impossible_answer:
            ranked.append({"answer": "", "score": null_score, "start": 0, "end": 0})
        # max() keeps the first of equal scores, as the pipeline's stable sort does.
        best = max(ranked, key=lambda a: a["score"], default={
            "answer": "", "score": 0.0, "start": 0, "end": 0})
        return {**best, "score": float(best["score"]), "n_chunks": len(outputs), "model": engine.uri}


def _window_spans(out: WindowOutput, cls_id: int | None,
                  max_answer_length: int) -> tuple[list[tuple[int, int, float]], float]:
    """The window's best spans ``(start token, end token, score)``, best first, and its
    no-answer score (``p_start * p_end`` of the first token)."""
    w = out.window
    allowed = w.sequence_ids == 1
    if cls_id is not None:
        # The pipeline leaves CLS unmasked: some models point at it for "no answer".
        allowed |= w.input_ids == cls_id
    start = _masked_softmax(out.values["start_logits"], allowed)
    end = _masked_softmax(out.values["end_logits"], allowed)
    null = float(start[0] * end[0])
    start[0] = end[0] = 0.0
    scores = np.tril(np.triu(np.outer(start, end)), max_answer_length - 1).ravel()
    if len(scores) <= _CANDIDATES:
        order = np.argsort(-scores)
    else:
        top = np.argpartition(-scores, _CANDIDATES)[:_CANDIDATES]
        order = top[np.argsort(-scores[top])]
    starts, ends = np.unravel_index(order, (w.length, w.length))
    # The pipeline's candidate filter always admits token 0 (the CLS position).
    admitted = allowed.copy()
    admitted[0] = True
    keep = admitted[starts] & admitted[ends]
    spans = [(int(s), int(e), float(scores[i]))
             for s, e, i in zip(starts[keep], ends[keep], order[keep], strict=True)]
    return spans, null


def _masked_softmax(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    x = np.where(allowed, logits, np.float32(_MASKED)).astype(np.float32)
    x = np.exp(x - x.max())
    return x / x.sum()


def _context_words(engine: Any, context: str) -> np.ndarray:
    """Word index of the context token starting at each character (-1 where none starts).

    The context's words are the same whether it is tokenized alone or after a question,
    so one call here gives every window's word boundaries.
    """
    with engine.loaded.tokenizer_lock:
        enc = engine.tokenizer(context, add_special_tokens=False, truncation=False,
                               return_offsets_mapping=True, verbose=False)
    words = np.full(len(context) + 1, -1, dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    word_ids = np.array([-1 if x is None else x for x in enc.word_ids()], dtype=np.int64)
    words[offsets[:, 0]] = word_ids
    return words


def _token_words(w: Window, words: np.ndarray | None) -> np.ndarray | None:
    """Word index of each context token of the window; -1 elsewhere (None: no alignment)."""
    if words is None:
        return None
    in_context = w.sequence_ids == 1
    # Question tokens' offsets point into the question: look up context tokens only.
    return np.where(in_context, words[np.where(in_context, w.offsets[:, 0], 0)], -1)


def _char_span(offsets: np.ndarray, token_words: np.ndarray | None, s: int, e: int) -> tuple[int, int]:
    """Character span of tokens ``s..e``, widened to the whole words of ``s`` and ``e`` as
    far as this window holds them (``word_to_chars`` of the window's encoding)."""
    if token_words is not None and token_words[s] >= 0 and token_words[e] >= 0:
        first = np.flatnonzero(token_words == token_words[s])[0]
        last = np.flatnonzero(token_words == token_words[e])[-1]
        return int(offsets[first, 0]), int(offsets[last, 1])
    return int(offsets[s, 0]), int(offsets[e, 1])
