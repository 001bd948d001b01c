"""Question answering: parity with transformers' question-answering pipeline, best span over
every window of a long context.

transformers 5 removed ``pipeline("question-answering")``; ``_pipeline_answer`` below is its
last release's algorithm (4.57: ``preprocess`` with overflowing windows and ``p_mask``,
``select_starts_ends`` -- still shipped in transformers 5 -- and ``postprocess`` with word
alignment and same-answer score summing), run one unpadded window at a time. It was checked
against the real 4.57.1 pipeline on these tiny checkpoints (72 question/context/window-size
cases over bert, distilbert and roberta: identical answers and offsets, scores within 1e-6).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from bertbeam.core.records import Document, Window, WindowOutput
from bertbeam.tasks.qa import QATask
from tests.beam_helpers import run_spec, run_variants
from tests.conftest import ARCHITECTURES, SAMPLE_TEXTS

TOLERANCE = 1e-4
QUESTIONS = ("Where does John Smith live?", "What does a for loop iterate over?")
LONG_CONTEXT = " ".join(SAMPLE_TEXTS[:8] + SAMPLE_TEXTS[1:5])


@functools.lru_cache(maxsize=4)
def _load(model_dir: str):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    return (AutoTokenizer.from_pretrained(model_dir),
            AutoModelForQuestionAnswering.from_pretrained(model_dir).eval())


def _pipeline_answer(model_dir: str, question: str, context: str, *, max_seq_len: int,
                     doc_stride: int, max_answer_len: int = 15) -> dict:
    """transformers 4.57 ``QuestionAnsweringPipeline`` (fast tokenizer, top_k=1)."""
    import torch
    from transformers.pipelines.document_question_answering import select_starts_ends

    tokenizer, model = _load(model_dir)
    enc = tokenizer(question, context, truncation="only_second", max_length=max_seq_len,
                    stride=doc_stride, return_token_type_ids=True, return_overflowing_tokens=True,
                    return_offsets_mapping=True)
    answers: list[dict] = []
    for i in range(len(enc["input_ids"])):
        ids = enc["input_ids"][i]
        p_mask = np.array([[s != 1 for s in enc.sequence_ids(i)]], dtype=np.int64)
        p_mask[0, np.array(ids) == tokenizer.cls_token_id] = 0
        inputs = {k: torch.tensor([enc[k][i]]) for k in tokenizer.model_input_names}
        with torch.inference_mode():
            out = model(**inputs)
        starts, ends, scores, _ = select_starts_ends(
            out.start_logits, out.end_logits, p_mask, inputs["attention_mask"].numpy(),
            top_k=12, max_answer_len=max_answer_len)
        encoding = enc[i]
        for s, e, score in zip(starts, ends, scores, strict=True):
            try:
                start = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)[0]
                end = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)[1]
            except Exception:
                start, end = encoding.offsets[s][0], encoding.offsets[e][1]
            same = [a for a in answers if a["answer"].lower() == context[start:end].lower()]
            if same:
                same[0]["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": start, "end": end,
                                "answer": context[start:end], "window": i})
    best = sorted(answers, key=lambda a: a["score"], reverse=True)[0]
    return {**best, "n_windows": len(enc["input_ids"])}


def _docs() -> list[Document]:
    pairs = [(q, c) for q in QUESTIONS for c in SAMPLE_TEXTS[:6]] + [(QUESTIONS[0], LONG_CONTEXT)]
    return [Document(id=f"q{i}", text=q, text_pair=c) for i, (q, c) in enumerate(pairs)]


def _assert_answer(row: dict, ref: dict, context: str) -> None:
    assert (row["answer"], row["start"], row["end"]) == (ref["answer"], ref["start"], ref["end"]), \
        row["id"]
    assert row["score"] == pytest.approx(ref["score"], abs=TOLERANCE), row["id"]
    assert context[row["start"]:row["end"]] == row["answer"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_matches_question_answering_pipeline(tmp_path, tiny_model, arch):
    """Same answer, offsets and score (1e-4) as the pipeline, for one-window contexts and a
    context of several windows, with batches of one window up to one batch for everything."""
    model = tiny_model(arch, "qa")
    docs = _docs()
    window = {"max_length": 48, "stride": 12}
    expected = {d.id: _pipeline_answer(model, d.text, d.text_pair, max_seq_len=48, doc_stride=12)
                for d in docs}
    assert expected[docs[-1].id]["n_windows"] >= 4
    variants = {str(b): (QATask(max_answer_length=15), run_spec(model, budget=b, **window))
                for b in (64, 65536)}
    for name, (rows, dead) in run_variants(tmp_path, docs, variants).items():
        assert not dead, name
        assert sorted(rows) == sorted(d.id for d in docs)
        for doc in docs:
            row, ref = rows[doc.id], expected[doc.id]
            _assert_answer(row, ref, doc.text_pair)
            assert (row["n_chunks"], row["model"]) == (ref["n_windows"], model)
            assert set(row) == {"id", "answer", "score", "start", "end", "n_chunks", "model"}


def test_best_span_of_a_long_context_can_be_in_its_last_window(tmp_path, tiny_model):
    """The span the pipeline picks over all windows of a long context lies in its last window
    here; bertbeam finds the same span, while truncating to the first window cannot."""
    model = tiny_model("bert", "qa")
    # A random model cannot be told where the answer is: this context was chosen because the
    # pipeline's best span over its 7 windows lies in the last one (asserted, not assumed).
    question, context = QUESTIONS[0], " ".join(SAMPLE_TEXTS[i] for i in (0, 1, 2, 8))
    ref = _pipeline_answer(model, question, context, max_seq_len=32, doc_stride=8)
    assert ref["window"] == ref["n_windows"] - 1 >= 5, "the fixture no longer puts it last"
    docs = [Document(id="long", text=question, text_pair=context)]
    variants = {mode: (QATask(), run_spec(model, max_length=32, stride=8, long_docs=mode))
                for mode in ("chunk", "truncate")}
    out = run_variants(tmp_path, docs, variants)
    chunked, truncated = out["chunk"][0]["long"], out["truncate"][0]["long"]
    _assert_answer(chunked, ref, context)
    assert chunked["n_chunks"] == ref["n_windows"]
    assert truncated["n_chunks"] == 1 and truncated["end"] < ref["start"]


def test_question_longer_than_the_window_is_dead_lettered(tmp_path, tiny_model):
    """A question that leaves no room for the context goes to the dead letter as too_long,
    even tokenized alone (chunk_size=1); the other document is answered."""
    model = tiny_model("distilbert", "qa")
    docs = [Document(id="long-question", text="word " * 40, text_pair="short context"),
            Document(id="ok", text="Who?", text_pair="John lives in London.")]
    spec = run_spec(model, max_length=32, stride=8, chunk_size=1)
    ((rows, dead),) = run_variants(tmp_path, docs, {"qa": (QATask(), spec)}).values()
    assert sorted(rows) == ["ok"] and sorted(dead) == ["long-question"]
    assert (dead["long-question"]["stage"], dead["long-question"]["reason"]) == (
        "tokenize", "too_long")


def _window(index: int, n: int, context_offsets: list[tuple[int, int]], text_pair: str) -> Window:
    """[CLS] q [SEP] context tokens [SEP] with the given context character offsets."""
    m = len(context_offsets)
    offsets = np.array([(0, 0), (0, 1), (0, 0), *context_offsets, (0, 0)], dtype=np.int32)
    return Window(doc_id="d", index=index, n_windows=n,
                  input_ids=np.array([2, 7, 3, *range(10, 10 + m), 3], dtype=np.int32),
                  type_ids=None, offsets=offsets,
                  sequence_ids=np.array([-1, 0, -1, *[1] * m, -1], dtype=np.int8),
                  text="q" if index == 0 else None, text_pair=text_pair if index == 0 else None)


class _Ctx:
    uri = "m"
    tokenizer = type("Tok", (), {"cls_token_id": 2})()


def test_planted_span_in_the_last_window_wins_over_earlier_windows():
    """Logits that point at one span of the last window (and weakly at spans of the others)
    give that span, with the score p_start * p_end of its window."""
    context = "aa bb cc dd ee ff gg hh"
    spans = [[(0, 2), (3, 5), (6, 8), (9, 11)], [(9, 11), (12, 14), (15, 17), (18, 20)],
             [(15, 17), (18, 20), (21, 23)]]
    outputs = []
    for i, offsets in enumerate(spans):
        w = _window(i, len(spans), offsets, context)
        start, end = np.zeros(w.length, np.float32), np.zeros(w.length, np.float32)
        target = (4, 5) if i == len(spans) - 1 else (3, 3)  # last window: "gg hh"
        start[target[0]], end[target[1]] = (8.0, 8.0) if i == len(spans) - 1 else (2.0, 2.0)
        outputs.append(WindowOutput(w, {"start_logits": start, "end_logits": end}))
    row = QATask(align_to_words=False).postprocess(_Ctx(), outputs)
    # The softmax runs over the window's 3 context tokens and CLS; the other three logits are 0.
    p = np.exp(8.0) / (np.exp(8.0) + 3)
    assert (row["answer"], row["start"], row["end"], row["n_chunks"]) == ("gg hh", 18, 23, 3)
    assert row["score"] == pytest.approx(p * p, rel=1e-5)


def test_handle_impossible_answer_returns_the_empty_answer():
    """CLS is the likeliest start and end: with handle_impossible_answer the answer is ''."""
    context = "aa bb"
    w = _window(0, 1, [(0, 2), (3, 5)], context)
    logits = np.zeros(w.length, np.float32)
    logits[0] = 10.0
    out = [WindowOutput(w, {"start_logits": logits, "end_logits": logits.copy()})]
    impossible = QATask(handle_impossible_answer=True, align_to_words=False).postprocess(_Ctx(), out)
    assert (impossible["answer"], impossible["start"], impossible["end"]) == ("", 0, 0)
    assert QATask(align_to_words=False).postprocess(_Ctx(), out)["answer"] in ("aa", "bb", "aa bb")


@pytest.mark.parametrize(("options", "message"), [
    ({"max_answer_length": 0}, "max_answer_length must be a positive integer, got 0"),
    ({"handle_impossible_answer": "yes"}, "handle_impossible_answer must be True or False, got 'yes'"),
])
def test_invalid_options_say_what_is_valid(options, message):
    with pytest.raises(ValueError, match=message):
        QATask(**options)


def test_schema_is_the_contract():
    import pyarrow as pa

    schema = QATask().schema(None)
    assert schema.names == ["id", "answer", "score", "start", "end", "n_chunks", "model"]
    assert [schema.field(n).type for n in ("answer", "score", "start", "end", "n_chunks")] == [
        pa.string(), pa.float32(), pa.int32(), pa.int32(), pa.int32()]
