"""Sequence classification: parity with transformers' text-classification pipeline, long
documents merged from window logits, multi-label thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from bertbeam.tasks.classify import ClassifyTask
from tests.beam_helpers import documents, run_spec, run_variants
from tests.conftest import ARCHITECTURES, CLASS_LABELS, SAMPLE_TEXTS

BUDGETS = (64, 65536)  # one window per batch .. the whole corpus in one batch
TOLERANCE = 1e-4


def _pipeline(model_dir: str, **kwargs):
    from transformers import pipeline

    return pipeline("text-classification", model=model_dir, device="cpu", **kwargs)


def _assert_labels_match(row: dict, expected: list[dict]) -> None:
    assert [x["label"] for x in row["labels"]] == [x["label"] for x in expected], row["id"]
    np.testing.assert_allclose([x["score"] for x in row["labels"]],
                               [x["score"] for x in expected], atol=TOLERANCE)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_matches_transformers_pipeline(tmp_path, tiny_model, arch):
    """Labels identical and scores within 1e-4 of pipeline(top_k=2), for a tiny and a large
    token budget; every id comes back once, with the DESIGN columns."""
    model = tiny_model(arch, "classify")
    expected = _pipeline(model, top_k=2)(SAMPLE_TEXTS)
    docs = documents(SAMPLE_TEXTS)
    variants = {str(b): (ClassifyTask(top_k=2), run_spec(model, budget=b)) for b in BUDGETS}
    for name, (rows, dead) in run_variants(tmp_path, docs, variants).items():
        assert not dead, name
        assert sorted(rows) == sorted(d.id for d in docs)
        for doc, ref in zip(docs, expected, strict=True):
            row = rows[doc.id]
            _assert_labels_match(row, ref)
            assert row["label"] == ref[0]["label"]
            assert row["score"] == pytest.approx(ref[0]["score"], abs=TOLERANCE)
            assert (row["n_chunks"], row["truncated"], row["model"]) == (1, False, model)
            assert set(row) == {"id", "label", "score", "labels", "n_chunks", "truncated", "model"}


def test_multi_label_keeps_every_label_over_the_threshold(tmp_path, tiny_model):
    """Sigmoid scores as pipeline(function_to_apply='sigmoid'); labels = all at or above the
    threshold, best first; label/score = the best label even when none passes."""
    model = tiny_model("bert", "classify")
    expected = _pipeline(model, top_k=None, function_to_apply="sigmoid")(SAMPLE_TEXTS)
    best = sorted(ref[0]["score"] for ref in expected)
    threshold = round((best[2] + best[3]) / 2, 6)  # some documents keep no label at all
    task = ClassifyTask(multi_label=True, threshold=threshold)
    ((rows, dead),) = run_variants(tmp_path, documents(SAMPLE_TEXTS),
                                   {"multi": (task, run_spec(model))}).values()
    assert not dead
    empty = 0
    for i, ref in enumerate(expected):
        row = rows[f"d{i}"]
        _assert_labels_match(row, [x for x in ref if x["score"] >= threshold])
        assert row["label"] == ref[0]["label"]
        assert row["score"] == pytest.approx(ref[0]["score"], abs=TOLERANCE)
        empty += not row["labels"]
    assert empty >= 2


def _window_logits(model_dir: str, text: str, max_length: int, stride: int) -> np.ndarray:
    """Logits of each window of ``text``, one forward pass per window, without bertbeam."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = tokenizer(text, truncation=True, max_length=max_length, stride=stride,
                    return_overflowing_tokens=True)
    with torch.inference_mode():
        return np.stack([model(input_ids=torch.tensor([ids])).logits[0].numpy()
                         for ids in enc["input_ids"]])


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_long_document_merges_window_logits(tmp_path, tiny_model, arch):
    """A document of several windows is scored from the mean (or max) of its window logits,
    then softmax; short documents in the same run keep n_chunks == 1."""
    model = tiny_model(arch, "classify")
    long_text = " ".join(SAMPLE_TEXTS[:5] * 3)
    logits = _window_logits(model, long_text, max_length=32, stride=8)
    assert len(logits) >= 4
    docs = documents([long_text, SAMPLE_TEXTS[0]])
    spec = run_spec(model, budget=128, max_length=32, stride=8)
    variants = {how: (ClassifyTask(top_k=3, chunk_merge=how), spec) for how in ("mean", "max")}
    names = list(CLASS_LABELS.values())
    for how, (rows, dead) in run_variants(tmp_path, docs, variants).items():
        assert not dead
        merged = logits.mean(axis=0) if how == "mean" else logits.max(axis=0)
        probs = np.exp(merged - merged.max())
        probs /= probs.sum()
        order = np.argsort(-probs)
        row = rows["d0"]
        assert [x["label"] for x in row["labels"]] == [names[i] for i in order], how
        np.testing.assert_allclose([x["score"] for x in row["labels"]], probs[order], atol=TOLERANCE)
        assert (row["n_chunks"], row["truncated"]) == (len(logits), False)
        assert rows["d1"]["n_chunks"] == 1


def test_truncate_scores_the_first_window_only(tmp_path, tiny_model):
    model = tiny_model("distilbert", "classify")
    long_text = " ".join(SAMPLE_TEXTS[:5] * 3)
    first = _window_logits(model, long_text, max_length=32, stride=0)[0]
    spec = run_spec(model, max_length=32, long_docs="truncate")
    ((rows, _),) = run_variants(tmp_path, documents([long_text]),
                                {"t": (ClassifyTask(), spec)}).values()
    probs = np.exp(first - first.max())
    probs /= probs.sum()
    row = rows["d0"]
    assert (row["n_chunks"], row["truncated"]) == (1, True)
    assert row["label"] == CLASS_LABELS[int(probs.argmax())]
    assert row["score"] == pytest.approx(float(probs.max()), abs=TOLERANCE)
    assert len(row["labels"]) == 1


@pytest.mark.slow
def test_multi_processing_runner_gives_the_same_labels(tmp_path, tiny_model):
    """Two worker processes: the task pickles, models load in workers, results unchanged."""
    model = tiny_model("roberta", "classify")
    expected = _pipeline(model, top_k=3)(SAMPLE_TEXTS)
    args = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")
    ((rows, dead),) = run_variants(tmp_path, documents(SAMPLE_TEXTS),
                                   {"mp": (ClassifyTask(top_k=3), run_spec(model, budget=64))},
                                   beam_args=args).values()
    assert not dead and len(rows) == len(SAMPLE_TEXTS)
    for i, ref in enumerate(expected):
        _assert_labels_match(rows[f"d{i}"], ref)


@pytest.mark.parametrize(("options", "message"), [
    ({"top_k": 0}, "top_k must be a positive integer, got 0"),
    ({"threshold": 1.5}, "threshold must be a number between 0 and 1, got 1.5"),
    ({"chunk_merge": "median"}, "Invalid chunk_merge: 'median'. Valid values are: 'mean', 'max'"),
    ({"multi_label": "yes"}, "multi_label must be True, False or None, got 'yes'"),
])
def test_invalid_options_say_what_is_valid(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ClassifyTask(**options)


def test_single_label_checkpoint_follows_transformers_default():
    """multi_label=None: sigmoid for a multi-label or one-label checkpoint, else softmax."""
    from transformers import BertConfig

    task = ClassifyTask()
    assert task.uses_sigmoid(BertConfig(num_labels=1))
    assert task.uses_sigmoid(BertConfig(num_labels=3, problem_type="multi_label_classification"))
    assert not task.uses_sigmoid(BertConfig(num_labels=3))
    assert not ClassifyTask(multi_label=False).uses_sigmoid(BertConfig(num_labels=1))
