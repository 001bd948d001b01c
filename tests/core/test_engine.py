"""The engine: one load per worker process, settings resolved once, failures become dead
letters where they happen, with their stage and a preview, whatever the entry point."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from bertbeam import (
    BatchSpec,
    Document,
    EmbedTask,
    InferDocuments,
    LabelDocuments,
    ModelSpec,
    RunSpec,
    TokenizeSpec,
)
from bertbeam.core.engine import Engine, EngineSpec
from bertbeam.core.planning import plan_batches
from bertbeam.core.records import DocumentChunk
from bertbeam.run.runners import resolve_runner
from tests.beam.test_transforms import _FailsOnMarker, _NaNOnMarker
from tests.conftest import SAMPLE_TEXTS, read_output, run_cli, write_corpus


def _counting(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def test_one_tokenizer_one_model_and_one_resolution_per_process(tmp_path, tiny_model, monkeypatch):
    """A whole local run (launcher checks and worker in one process): the tokenizer and the
    model load once, the device is resolved once, and the engine is built once, although
    four stages use it."""
    import transformers

    from bertbeam.core import engine, models
    from bertbeam.run import job, runinfo

    models._cached_tokenizer.cache_clear()
    calls: list[str] = []
    _counting(monkeypatch, transformers.AutoTokenizer, "from_pretrained", calls)
    _counting(monkeypatch, models, "load_model", calls)
    _counting(monkeypatch, engine.Engine, "_build", calls)
    # Counted wherever a caller took the name: the worker's engine and the launcher's modules.
    for module in (models, runinfo):
        _counting(monkeypatch, module, "resolve_device", calls)
    for module in (engine, job):
        _counting(monkeypatch, module, "resolve_max_length", calls)
    corpus = write_corpus(tmp_path / "in.parquet", {"id": [f"d{i}" for i in range(10)],
                                                   "text": SAMPLE_TEXTS})
    # A fresh spec (a cache dir of its own), so that no engine of an earlier test is reused.
    assert run_cli("embed", "--input", corpus, "--output", tmp_path / "out", "--model",
                   tiny_model("bert", "base"), "--model-cache-dir", tmp_path / "cache",
                   "--token-budget", "64") == 0
    assert len(read_output(tmp_path / "out")) == 10
    assert {name: calls.count(name) for name in set(calls)} == {
        "from_pretrained": 1, "load_model": 1, "_build": 1,
        # once on the launcher (a check, and the start line's device), once in the engine
        "resolve_max_length": 2, "resolve_device": 2,
    }


def _engine(model_dir: str, task: Any = None, **tokenize: Any) -> Engine:
    return Engine.acquire(EngineSpec(ModelSpec(uri=model_dir, device="cpu"),
                                     TokenizeSpec(**tokenize), task or EmbedTask()))


def test_encode_dead_letters_only_the_document_the_tokenizer_fails_on(tiny_model, monkeypatch):
    """A tokenizer failure, including a BaseException such as tokenizers' PanicException,
    costs only the document it happens on."""
    engine = _engine(tiny_model("bert", "base"))

    class Panic(BaseException):  # pyo3_runtime.PanicException derives from BaseException
        pass

    real = Engine._tokenize

    def fragile(self, texts, pairs):
        if any("boom" in t for t in texts):
            raise Panic("tokenizer panicked")
        return real(self, texts, pairs)

    monkeypatch.setattr(Engine, "_tokenize", fragile)
    docs = DocumentChunk(["a", "b", "c"], ["fine", "boom " * 3, "also fine"])
    windows, dead_letters = engine.encode(docs)
    assert [windows.docs.ids[d] for d in windows.doc] == ["a", "c"]
    assert windows.window(1).input_ids.tolist() == engine.tokenizer("also fine")["input_ids"]
    (dead,) = dead_letters
    assert (dead.id, dead.stage, dead.reason, dead.preview) == (
        "b", "tokenize", "tokenize_error", "boom boom boom ")
    assert "tokenizer panicked" in dead.message


def test_resolved_settings(tiny_model):
    engine = _engine(tiny_model("bert", "base"), max_length=16, stride=4)
    assert (engine.max_length, engine.stride, engine.pad_id, engine.device.type) == (16, 4, 0, "cpu")
    assert engine.pad_multiple("auto") == 1 and engine.pad_multiple(8) == 8
    truncating = _engine(tiny_model("bert", "base"), max_length=16, long_docs="truncate")
    assert truncating.stride == 0


@dataclass(frozen=True, kw_only=True)
class _FailsInPostprocess(EmbedTask):
    name: ClassVar[str] = "embed"

    def postprocess(self, engine: Any, outputs: list) -> dict[str, Any]:
        if "bad" in outputs[0].window.preview:
            raise ZeroDivisionError("broken post-processing")
        return super().postprocess(engine, outputs)

    def postprocess_chunk(self, engine: Any, outputs: Any) -> dict[str, Any]:
        # The columnar step fails for the whole chunk: the engine goes document by document.
        windows = outputs.out.windows
        if any("bad" in windows.preview(j) for j in outputs.first):
            raise ZeroDivisionError("broken post-processing")
        return super().postprocess_chunk(engine, outputs)


def test_every_stage_dead_letters_with_its_stage_and_a_preview(tiny_model):
    """A model failure, a NaN output and a post-processing failure each give a dead letter
    with the stage where it happened and the document's first characters."""
    from transformers import AutoTokenizer

    directory = tiny_model("bert", "base")
    marker = AutoTokenizer.from_pretrained(directory).convert_tokens_to_ids("def")
    run = RunSpec(model=ModelSpec(uri=directory), batch=BatchSpec(token_budget=100_000))
    cases = {"model": (_FailsOnMarker(marker=marker), "def fails here", "model", "model_error"),
             "nan": (_NaNOnMarker(marker=marker), "def gives nan", "model", "nan_output"),
             "post": (_FailsInPostprocess(), "a bad document", "postprocess", "postprocess_error")}
    for name, (task, text, stage, reason) in cases.items():
        docs = [Document("good", "a fine document"), Document("bad", text)]
        with TestPipeline(runner=resolve_runner(beam.options.pipeline_options.PipelineOptions())) as p:
            out = p | f"Create[{name}]" >> beam.Create(docs) | InferDocuments(task, run=run)
            assert_that(out["results"] | beam.Map(lambda r: r.id), equal_to(["good"]), label="Good")
            assert_that(out["dead_letter"] | beam.Map(lambda d: (d.id, d.stage, d.reason, d.preview)),
                        equal_to([("bad", stage, reason, text)]), label="Bad")


def test_library_input_is_validated_like_the_read_path(tiny_model):
    """Documents given directly: empty and null texts, a missing id and a duplicate id get the
    reasons ReadDocuments gives; each id comes out once."""
    docs = [Document("a", "first text"), Document("b", ""), Document("c", None),
            Document("d", "   \n"), Document(None, "no id"), Document("a", "another text"),
            Document("e", "fine")]
    run = RunSpec(model=ModelSpec(uri=tiny_model("bert", "base")))
    with TestPipeline(runner=resolve_runner(beam.options.pipeline_options.PipelineOptions())) as p:
        out = p | beam.Create(docs) | InferDocuments(EmbedTask(), run=run)
        assert_that(out["results"] | beam.Map(lambda r: r.id), equal_to(["a", "e"]), label="Good")
        assert_that(out["dead_letter"] | beam.Map(lambda d: (d.id, d.reason)), equal_to([
            ("b", "empty_text"), ("c", "null_text"), ("d", "empty_text"), (None, "missing_id"),
            ("a", "duplicate_id")]), label="Bad")


def test_results_carry_a_beam_schema_that_select_takes(tiny_model):
    """The results PCollection is schema-aware: beam.Select picks columns by name, with no
    conversion code, and the Beam schema has the task's column types."""
    from apache_beam.typehints.schemas import named_fields_from_element_type

    run = RunSpec(model=ModelSpec(uri=tiny_model("bert", "classify")))
    with TestPipeline(runner=resolve_runner(beam.options.pipeline_options.PipelineOptions())) as p:
        out = (p | beam.Create([Document("a", "one text"), Document("b", "two texts")])
               | LabelDocuments("classify", run=run))
        fields = dict(named_fields_from_element_type(out["results"].element_type))
        assert list(fields) == ["id", "label", "score", "labels", "n_chunks", "truncated", "model"]
        picked = out["results"] | beam.Select("id", "n_chunks")
        assert_that(picked | beam.Map(tuple), equal_to([("a", 1), ("b", 1)]))
        reasons = out["dead_letter"] | "SelectDead" >> beam.Select("id", "reason")
        assert_that(reasons | "DeadTuples" >> beam.Map(tuple), equal_to([]), label="NoDead")


def test_the_cli_writes_the_same_rows_it_counts(tmp_path, tiny_model):
    """Rows written through the Beam schema round-trip to Parquet with the task's columns."""
    corpus = write_corpus(tmp_path / "in.parquet", {"id": ["x", "y"], "text": SAMPLE_TEXTS[:2]})
    assert run_cli("label", "--task", "classify", "--input", corpus, "--output", tmp_path / "o",
                   "--model", tiny_model("bert", "classify"), "--top-k", "2") == 0
    rows = read_output(tmp_path / "o")
    assert sorted(r["id"] for r in rows) == ["x", "y"]
    assert all(len(r["labels"]) == 2 and set(r["labels"][0]) == {"label", "score"} for r in rows)


@pytest.mark.parametrize("case", ["embed-mean", "embed-max", "embed-first", "classify-mean",
                                  "classify-max", "classify-multi-label", "zero-shot"])
def test_columnar_postprocess_equals_the_per_document_one(tiny_model, case):
    """A task's postprocess_chunk gives, for every document, exactly what its per-document
    postprocess gives: single- and multi-window documents, each merge mode."""
    from bertbeam import ClassifyTask, ZeroShotTask
    from bertbeam.core.records import ChunkOutputs

    task, head = {
        "embed-mean": (EmbedTask(), "base"), "embed-max": (EmbedTask(chunk_pooling="max"), "base"),
        "embed-first": (EmbedTask(chunk_pooling="first"), "base"),
        "classify-mean": (ClassifyTask(top_k=3), "classify"),
        "classify-max": (ClassifyTask(chunk_merge="max"), "classify"),
        "classify-multi-label": (ClassifyTask(multi_label=True, threshold=0.2), "classify"),
        "zero-shot": (ZeroShotTask(labels=("code", "animals", "food")), "base"),
    }[case]
    engine = _engine(tiny_model("bert", head), task, max_length=16, stride=4)
    texts = [*SAMPLE_TEXTS, " ".join(SAMPLE_TEXTS), SAMPLE_TEXTS[0] * 4]
    windows, _ = engine.encode(DocumentChunk([f"d{i}" for i in range(len(texts))], texts))
    out = engine.run(engine.plan(windows, BatchSpec(token_budget=256)))
    first = np.flatnonzero(np.r_[True, windows.doc[1:] != windows.doc[:-1]])
    outputs = ChunkOutputs(out, first, np.diff(np.r_[first, len(windows)]), task.token_level,
                           task.needs_text)
    assert outputs.count.max() > 1  # multi-window documents are among them
    columns = task.postprocess_chunk(engine, outputs)
    for g in range(len(outputs)):
        expected = task.postprocess(engine, outputs.outputs(g))
        for name, value in expected.items():
            got = columns[name][g]
            if isinstance(value, np.ndarray):
                np.testing.assert_allclose(got, value, rtol=1e-6, atol=1e-7)
            elif name == "labels":
                assert [r["label"] for r in got] == [r["label"] for r in value]
                np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in value])
            elif isinstance(value, float):
                assert abs(got - value) < 1e-9, name
            else:
                assert got == value, (name, g)


def test_a_costly_model_lets_finished_documents_go_within_part_seconds(tiny_model, monkeypatch):
    """Parts wait for PART_WINDOWS windows only while that is quick: once PART_SECONDS have
    passed since the last part left (a costly model's batches), what has finished leaves,
    so a plan's documents are written and counted as they finish, not at its end."""
    import bertbeam.core.engine as engine_module

    engine = _engine(tiny_model("bert", "base"), EmbedTask(), max_length=16, stride=4)
    texts = [*SAMPLE_TEXTS, *SAMPLE_TEXTS]
    windows, _ = engine.encode(DocumentChunk([f"d{i}" for i in range(len(texts))], texts))
    plan = engine.plan(windows, BatchSpec(token_budget=64))
    assert len(plan.batches) > 3
    monkeypatch.setattr(engine_module, "PART_SECONDS", 3600.0)
    assert len(list(engine.collect_parts(plan, engine.submit(plan), min_windows=10**6))) == 1
    monkeypatch.setattr(engine_module, "PART_SECONDS", 0.0)
    parts = list(engine.collect_parts(plan, engine.submit(plan), min_windows=10**6))
    assert len(parts) > 1
    assert sorted(d for out in parts for d in engine.postprocess(out).columns["id"]) == sorted(
        f"d{i}" for i in range(len(texts)))


@pytest.mark.parametrize("head,task", [("base", EmbedTask()), ("ner", None)])
def test_a_plan_comes_back_in_parts_that_add_up_to_the_whole(tiny_model, head, task):
    """collect_parts yields documents as the batch holding their last window returns: every
    document once, whole, with its outputs (token-level ones too) and results equal to
    collecting the plan at once; documents leave before the last batch is back, in parts of
    at least ``min_windows`` windows (the last part excepted)."""
    from bertbeam import EntitiesTask

    task = task or EntitiesTask()
    engine = _engine(tiny_model("bert", head), task, max_length=16, stride=4)
    texts = [*SAMPLE_TEXTS, " ".join(SAMPLE_TEXTS), *SAMPLE_TEXTS]
    windows, _ = engine.encode(DocumentChunk([f"d{i}" for i in range(len(texts))], texts))
    plan = engine.plan(windows, BatchSpec(token_budget=64))
    assert len(plan.batches) > 3
    whole = engine.postprocess(engine.collect(plan, engine.submit(plan)))
    parts = [engine.postprocess(out)
             for out in engine.collect_parts(plan, engine.submit(plan), min_windows=1)]
    assert len(parts) > 1
    # Parts of at least 5 windows: fewer, larger parts, the same documents.
    larger = list(engine.collect_parts(plan, engine.submit(plan), min_windows=5))
    assert all(len(out.windows) >= 5 for out in larger[:-1]) and 1 < len(larger) < len(parts)
    assert sorted(i for out in larger for i in engine.postprocess(out).columns["id"]) == sorted(
        whole.columns["id"])
    ids = [i for part in parts for i in part.columns["id"]]
    assert sorted(ids) == sorted(whole.columns["id"]) and len(ids) == len(set(ids)) == len(texts)
    row = {i: (part, k) for part in parts for k, i in enumerate(part.columns["id"])}
    for k, doc_id in enumerate(whole.columns["id"]):
        part, j = row[doc_id]
        for name, column in whole.columns.items():
            if isinstance(column, np.ndarray):
                np.testing.assert_array_equal(part.columns[name][j], column[k])
            else:
                assert part.columns[name][j] == column[k], (name, doc_id)


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_cpu_streams_share_the_token_budget(tiny_model, streams, monkeypatch):
    """The batches that run at once hold at most ``token_budget`` padded tokens together:
    each of ``streams`` CPU batches is cut to its share, so activation memory is bounded by
    the budget whatever the streams (two full-budget batches at once set the peak RSS).
    The tiny checkpoint is given a real model's cost per token (it is nearly free)."""
    import bertbeam.core.engine as engine_module

    monkeypatch.setattr(engine_module, "flops_per_token",
                        lambda config: engine_module.REFERENCE_FLOPS_PER_TOKEN)
    engine = Engine.acquire(EngineSpec(
        ModelSpec(uri=tiny_model("bert", "base"), device="cpu", num_threads=streams,
                  cpu_streams=streams), TokenizeSpec(max_length=32, stride=8), EmbedTask()))
    assert engine.streams == streams
    texts = [" ".join(SAMPLE_TEXTS)] * 4 + SAMPLE_TEXTS
    windows, _ = engine.encode(DocumentChunk([f"d{i}" for i in range(len(texts))], texts))
    plan = engine.plan(windows, BatchSpec(token_budget=192))
    sizes = [len(rows) * padded for rows, padded in zip(plan.batches, plan.padded, strict=True)]
    assert max(sizes) <= 192 // streams
    assert max(sizes) > 192 // streams - 32  # the share is used, not just respected


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_a_small_plan_gives_every_cpu_stream_a_batch(tiny_model, streams):
    """A handful of documents (a streaming bundle) that fit one batch are cut into about one
    batch per stream, so they run on every core; each window is in exactly one batch."""
    engine = Engine.acquire(EngineSpec(
        ModelSpec(uri=tiny_model("bert", "base"), device="cpu", num_threads=streams,
                  cpu_streams=streams), TokenizeSpec(max_length=64), EmbedTask()))
    texts = SAMPLE_TEXTS[:6]
    windows, _ = engine.encode(DocumentChunk([f"d{i}" for i in range(len(texts))], texts))
    plan = engine.plan(windows, BatchSpec(token_budget=8192))
    assert len(plan.batches) >= streams
    assert sorted(np.concatenate(plan.batches).tolist()) == list(range(len(windows.lengths)))
    if streams == 1:
        assert len(plan.batches) == 1
    big = engine.plan(windows, BatchSpec(token_budget=8))  # over budget: cut as before
    assert len(big.batches) == len(plan_batches(windows.lengths, 8 // streams or 1, None, 1,
                                                engine.batch_overhead(BatchSpec())))


def test_a_nearly_free_model_gets_whole_budget_batches(tiny_model):
    """Where the model costs next to nothing per token (the tiny checkpoint: 33 thousand
    FLOPs, all-MiniLM-L6-v2: 21 million), memory is no reason to share the budget and a
    batch's fixed cost outweighs padding: every stream's batches fill the whole budget, as
    few as the budget allows (the sorted loop's cut), where a costly model's pad less."""
    from bertbeam.core.engine import REFERENCE_FLOPS_PER_TOKEN, flops_per_token, nearly_free

    engine = Engine.acquire(EngineSpec(
        ModelSpec(uri=tiny_model("bert", "base"), device="cpu", num_threads=2, cpu_streams=2),
        TokenizeSpec(max_length=64, long_docs="truncate"), EmbedTask()))
    assert nearly_free(engine.config) and flops_per_token(engine.config) < REFERENCE_FLOPS_PER_TOKEN
    spec = BatchSpec(token_budget=512)
    assert engine.batch_budget(spec) == 512 and engine.batch_overhead(spec) == 512
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(SAMPLE_TEXTS, int(n))) for n in rng.integers(1, 4, 60)]
    windows, _ = engine.encode(DocumentChunk([f"d{i}" for i in range(len(texts))], texts))
    plan = engine.plan(windows, spec)
    fewest = plan_batches(windows.lengths, 512, None, 1, 10**9)
    assert len(plan.batches) == len(fewest)
    careful = plan_batches(windows.lengths, 512, None, 1, spec.batch_overhead_tokens)
    assert len(careful) > len(plan.batches)  # a real model's plan pads less in more batches
    assert not nearly_free(SimpleNamespace(num_hidden_layers=6, hidden_size=384, intermediate_size=1536))
    assert flops_per_token(SimpleNamespace()) is None and not nearly_free(SimpleNamespace())
