"""BertModelHandler: RunInference gives the same results as sentence-transformers and the
transformers pipelines; the ModelHandler contract (batching, bytes, arguments) holds."""

from __future__ import annotations

import numpy as np
import pytest

from bertbeam.beam.handler import BertModelHandler
from bertbeam.config import BatchSpec, ModelSpec, RunSpec, TokenizeSpec
from bertbeam.core.deadletter import DeadLetter
from bertbeam.tasks.classify import ClassifyTask
from bertbeam.tasks.embed import EmbedTask
from bertbeam.tasks.qa import QATask
from tests.beam.test_transforms import _NaNOnMarker
from tests.conftest import ARCHITECTURES, SAMPLE_TEXTS

TOLERANCE = 1e-4


def _run_inference(handler: BertModelHandler, examples: list) -> list:
    """Runs ``examples`` through ``RunInference(handler)`` in a TestPipeline; returns the
    PredictionResults in any order."""
    import pickle
    import tempfile
    import uuid
    from pathlib import Path

    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.test_pipeline import TestPipeline

    def save(result, directory):
        (Path(directory) / f"{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(result))

    with tempfile.TemporaryDirectory() as directory:
        with TestPipeline() as p:
            _ = (p | beam.Create(examples) | RunInference(handler)
                 | beam.Map(save, directory))
        return [pickle.loads(f.read_bytes()) for f in Path(directory).glob("*.pkl")]


def test_run_inference_embeddings_match_sentence_transformers(embedded_model_dir):
    """RunInference(BertModelHandler(EmbedTask())) on the embedded model: each example's
    embedding has cosine >= 0.9999 with sentence-transformers' normalized encode."""
    from sentence_transformers import SentenceTransformer

    handler = BertModelHandler(EmbedTask(), run=RunSpec(model=ModelSpec(device="cpu")), max_batch_size=4)
    results = _run_inference(handler, SAMPLE_TEXTS)
    reference = SentenceTransformer(embedded_model_dir, device="cpu").encode(
        SAMPLE_TEXTS, normalize_embeddings=True)
    assert sorted(r.example for r in results) == sorted(SAMPLE_TEXTS)
    for result in results:
        expected = reference[SAMPLE_TEXTS.index(result.example)]
        vector = result.inference["embedding"]
        assert vector.dtype == np.float32 and vector.shape == (384,)
        assert float(vector @ expected) >= 0.9999, result.example
        assert result.inference["model"] == result.model_id == "embedded:all-MiniLM-L6-v2"
        assert result.inference["n_chunks"] == 1


def test_run_inference_classify_matches_transformers_pipeline(tiny_model):
    """A tiny BERT classifier through RunInference: labels identical to transformers'
    text-classification pipeline (top_k=3), scores within 1e-4."""
    from transformers import pipeline

    model = tiny_model("bert", "classify")
    handler = BertModelHandler(ClassifyTask(top_k=3), run=RunSpec(model=ModelSpec(uri=model, device="cpu")))
    results = _run_inference(handler, SAMPLE_TEXTS)
    expected = pipeline("text-classification", model=model, device="cpu", top_k=3)(SAMPLE_TEXTS)
    assert sorted(r.example for r in results) == sorted(SAMPLE_TEXTS)
    for result in results:
        _assert_same_labels(result.inference, expected[SAMPLE_TEXTS.index(result.example)])


def _assert_same_labels(inference: dict, expected: list[dict]) -> None:
    assert [x["label"] for x in inference["labels"]] == [x["label"] for x in expected]
    np.testing.assert_allclose([x["score"] for x in inference["labels"]],
                               [x["score"] for x in expected], atol=TOLERANCE)
    assert inference["label"] == expected[0]["label"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_run_inference_directly_matches_pipeline_for_every_architecture(tiny_model, arch):
    """load_model + run_inference without Beam, with a token budget small enough for several
    model batches: same labels and scores as transformers, in example order."""
    from transformers import pipeline

    model = tiny_model(arch, "classify")
    handler = BertModelHandler(ClassifyTask(top_k=2), run=RunSpec(
        model=ModelSpec(uri=model, device="cpu"), batch=BatchSpec(token_budget=64)))
    results = list(handler.run_inference(SAMPLE_TEXTS, handler.load_model()))
    expected = pipeline("text-classification", model=model, device="cpu", top_k=2)(SAMPLE_TEXTS)
    assert [r.example for r in results] == SAMPLE_TEXTS
    for result, ref in zip(results, expected, strict=True):
        _assert_same_labels(result.inference, ref)


def test_long_examples_are_chunked_like_the_pipeline(tiny_model):
    """A text longer than the window becomes several windows, merged as the task merges them:
    the handler's embedding equals the one computed from its windows alone."""
    model = tiny_model("bert", "base")
    long_text = " ".join(SAMPLE_TEXTS) * 3
    chunked = BertModelHandler(EmbedTask(chunk_pooling="first"), run=RunSpec(
        model=ModelSpec(uri=model, device="cpu"), tokenize=TokenizeSpec(max_length=32, stride=8)))
    (result,) = chunked.run_inference([long_text], chunked.load_model())
    assert result.inference["n_chunks"] > 1 and result.inference["truncated"] is False
    truncated = BertModelHandler(EmbedTask(), run=RunSpec(
        model=ModelSpec(uri=model, device="cpu"),
        tokenize=TokenizeSpec(max_length=32, long_docs="truncate")))
    (first,) = truncated.run_inference([long_text], truncated.load_model())
    assert first.inference["n_chunks"] == 1 and first.inference["truncated"] is True
    # chunk_pooling="first" keeps window 0: the same vector as truncating to one window.
    np.testing.assert_allclose(result.inference["embedding"], first.inference["embedding"],
                               atol=1e-6)


def test_pair_examples_answer_like_the_pipeline(tmp_path, tiny_model):
    """(question, context) examples for QA, contexts of one and of several windows: the same
    answers, offsets and scores as InferDocuments on the same documents."""
    from bertbeam.core.records import Document
    from tests.beam_helpers import run_spec, run_variants

    model = tiny_model("bert", "qa")
    pairs = [("Where does John Smith live?", c) for c in SAMPLE_TEXTS[3:6]]
    pairs.append(("What does a for loop iterate over?", " ".join(SAMPLE_TEXTS)))
    spec = run_spec(model, max_length=48, stride=12)
    ((rows, dead),) = run_variants(
        tmp_path, [Document(f"q{i}", q, c) for i, (q, c) in enumerate(pairs)],
        {"qa": (QATask(), spec)}).values()
    handler = BertModelHandler(QATask(), run=spec)
    results = list(handler.run_inference(pairs, handler.load_model()))
    assert not dead and [r.example for r in results] == pairs
    assert results[-1].inference["n_chunks"] > 1
    for i, result in enumerate(results):
        expected = {k: v for k, v in rows[f"q{i}"].items() if k != "id"}
        assert result.inference == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize("task, example, reason", [
    (EmbedTask(), ("a", "b"), "not_a_string"),
    (EmbedTask(), 3, "not_a_string"),
    (EmbedTask(), "", "empty_text"),
    (EmbedTask(), "   ", "empty_text"),
    (EmbedTask(), None, "null_text"),
    (QATask(), "just a question", "not_a_string"),
    (QATask(), ("q", "c", "extra"), "not_a_string"),
    (QATask(), ("q", " "), "empty_text"),
], ids=["tuple", "int", "empty", "blank", "none", "pair-str", "pair-triple", "pair-blank"])
def test_bad_examples_are_dead_letters_of_their_own(tiny_model, task, example, reason):
    """A bad example becomes its own dead letter with the reason the pipeline gives; the
    good example beside it in the same batch is answered."""
    model = tiny_model("bert", "qa" if task.pair_input else "base")
    handler = BertModelHandler(task, run=RunSpec(model=ModelSpec(uri=model, device="cpu")),
                               inline_errors=True)
    good = ("Who?", "John lives in Paris.") if task.pair_input else "a good text"
    bad_result, good_result = handler.run_inference([example, good], handler.load_model())
    assert isinstance(bad_result.inference, DeadLetter)
    assert (bad_result.inference.stage, bad_result.inference.reason) == ("read", reason)
    assert isinstance(good_result.inference, dict)


def test_run_inference_dead_letters_per_row_with_exception_handling(tiny_model):
    """Through RunInference(...).with_exception_handling(): a bad example and a NaN output
    each fail alone, with their reason and a preview; the other examples come out."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from transformers import AutoTokenizer

    model = tiny_model("bert", "base")
    marker = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids("def")
    handler = BertModelHandler(_NaNOnMarker(marker=marker), max_batch_size=8, run=RunSpec(
        model=ModelSpec(uri=model, device="cpu")))
    examples = ["fine text", "", "more fine text", "def poison"]
    with TestPipeline() as p:
        good, bad = (p | beam.Create(examples)
                     | RunInference(handler).with_exception_handling())
        assert_that(good | beam.Map(lambda r: r.example), equal_to(["fine text", "more fine text"]),
                    label="Good")
        reasons = bad.failed_postprocessing[0] | beam.Map(
            lambda failed: (failed[0].example, failed[0].inference.reason,
                            failed[0].inference.preview))
        assert_that(reasons, equal_to([("", "empty_text", ""), ("def poison", "nan_output", "def poison")]),
                    label="Bad")


def test_model_handler_contract():
    """Batching kwargs for BatchElements, byte counts, namespace, arguments checked early;
    nothing is loaded on construction."""
    handler = BertModelHandler(EmbedTask(), max_batch_size=16, min_batch_size=2)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 16}
    assert BertModelHandler(EmbedTask()).batch_elements_kwargs()["max_batch_size"] == 64
    assert handler.get_num_bytes(["ab", "é"]) == 4
    assert handler.get_num_bytes([("q?", "ctx")]) == 5
    assert handler.get_metrics_namespace() == "bertbeam"
    handler.validate_inference_args(None)
    with pytest.raises(ValueError, match=r"takes no inference_args.*\['top_k'\]"):
        handler.validate_inference_args({"top_k": 2})
    handler.update_model_path("gs://bucket/new-model")
    assert handler._spec.model.uri == "gs://bucket/new-model"
    with pytest.raises(TypeError, match="task must be a bertbeam Task"):
        BertModelHandler("embed")
    with pytest.raises(TypeError, match="run must be a RunSpec or None, got str"):
        BertModelHandler(EmbedTask(), run="embedded:all-MiniLM-L6-v2")
    shared = BertModelHandler(EmbedTask(), large_model=True)
    assert shared.share_model_across_processes() and BertModelHandler(
        EmbedTask(), model_copies=2).model_copies() == 2
    with pytest.raises(ValueError, match="max_batch_size must be a positive integer, got 0"):
        BertModelHandler(EmbedTask(), max_batch_size=0)
    with pytest.raises(ValueError, match=r"min_batch_size \(8\) must not exceed max_batch_size \(4\)"):
        BertModelHandler(EmbedTask(), min_batch_size=8, max_batch_size=4)


def test_handler_gives_its_one_batch_at_a_time_all_the_threads(tiny_model):
    """RunModel splits the threads among CPU streams; the handler runs no streams, so its
    batches must keep every thread asked for."""
    import torch

    before = torch.get_num_threads()
    try:
        spec = ModelSpec(uri=tiny_model("bert", "base"), device="cpu", num_threads=2)
        engine = BertModelHandler(EmbedTask(), run=RunSpec(model=spec)).load_model()
        assert (engine.streams, torch.get_num_threads()) == (1, 2)
    finally:
        torch.set_num_threads(before)
