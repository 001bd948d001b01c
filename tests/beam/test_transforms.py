"""The library API: transforms composed with a user's own I/O, compact outputs, and the
model step's isolation of bad rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from bertbeam import (
    BatchByTokens,
    BatchSpec,
    ChunkDocuments,
    Document,
    EmbedTask,
    InferDocuments,
    LabelDocuments,
    ModelSpec,
    Postprocess,
    RunModel,
    RunSpec,
    Tokenize,
    TokenizeSpec,
)
from bertbeam.core.engine import EngineSpec
from bertbeam.core.records import DocumentChunk, OutputChunk, WindowChunk
from bertbeam.run.runners import resolve_runner
from tests.conftest import SAMPLE_TEXTS


def _pipeline() -> TestPipeline:
    options = PipelineOptions([])
    return TestPipeline(runner=resolve_runner(options), options=options)


def _docs(texts: list[str]) -> list[Document]:
    return [Document(f"t{i}", t) for i, t in enumerate(texts)]


def test_label_documents_composes_with_the_users_own_io(tiny_model):
    run = RunSpec(model=ModelSpec(uri=tiny_model("distilbert", "classify")))
    with _pipeline() as p:
        out = (p | beam.Create(_docs(SAMPLE_TEXTS))
               | LabelDocuments("classify", top_k=2, run=run))
        assert_that(out["results"] | beam.Map(lambda r: (r.id, len(r.labels))),
                    equal_to([(f"t{i}", 2) for i in range(len(SAMPLE_TEXTS))]), label="Rows")
        assert_that(out["dead_letter"], equal_to([]), label="NoDeadLetter")


def test_stage_transforms_compose_over_chunks(tiny_model):
    """ChunkDocuments | Tokenize | BatchByTokens | RunModel | Postprocess by hand: chunks of
    packed windows, one output row per window, record batches of results holding every
    document once, in the order of the schema."""
    run = RunSpec(model=ModelSpec(uri=tiny_model("bert", "base")))
    spec = EngineSpec(run.model, run.tokenize, EmbedTask())
    schema = InferDocuments(EmbedTask(), run=run).schema()

    def check_outputs(out: OutputChunk):
        n = len(out.windows)
        packed = out.windows.input_ids.ndim == 1 and len(out.windows.input_ids) == out.windows.starts[-1]
        return packed and out.values["embedding"].shape == (n, 32) and not out.errors

    with _pipeline() as p:
        windows = (p | beam.Create(_docs(SAMPLE_TEXTS)) | ChunkDocuments(4)
                   | Tokenize(EmbedTask(), run=run))["windows"]
        outputs = (windows | BatchByTokens(BatchSpec(token_budget=100_000, buffer_size=1000),
                                           engine=spec)
                   | RunModel(EmbedTask(), run=run))
        n = len(SAMPLE_TEXTS)
        assert_that(outputs | "Windows" >> beam.Map(lambda o: len(o.windows))
                    | beam.CombineGlobally(sum), equal_to([n]), label="AllWindows")
        assert_that(outputs | "Check" >> beam.Map(check_outputs) | beam.Distinct(),
                    equal_to([True]), label="Outputs")
        results = (outputs | Postprocess(EmbedTask(), run=run, schema=schema))["results"]
        assert_that(results | "Schema" >> beam.Map(lambda b: b.schema == schema) | "One" >> beam.Distinct(),
                    equal_to([True]), label="Schema")
        assert_that(results | "Ids" >> beam.FlatMap(lambda b: b.column("id").to_pylist()),
                    equal_to([f"t{i}" for i in range(n)]), label="Results")


@dataclass(frozen=True, kw_only=True)
class _FailsOnMarker(EmbedTask):
    """An embedding task whose model step fails on any batch holding a marker token."""

    marker: int = 0
    name: ClassVar[str] = "embed"

    def forward(self, loaded: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        if bool((inputs["input_ids"] == self.marker).any()):
            raise RuntimeError("poisoned input")
        return super().forward(loaded, inputs)


@dataclass(frozen=True, kw_only=True)
class _NaNOnMarker(EmbedTask):
    marker: int = 0
    name: ClassVar[str] = "embed"

    def forward(self, loaded: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        out = super().forward(loaded, inputs)
        poisoned = (inputs["input_ids"] == self.marker).any(dim=1)
        out["embedding"][poisoned] = float("nan")
        return out


def test_a_failing_batch_is_bisected_down_to_the_bad_rows(tiny_model):
    """Only the rows that make the model fail are dead-lettered (model_error); their batch
    neighbours are written. NaN outputs are dead-lettered as nan_output."""
    from transformers import AutoTokenizer

    directory = tiny_model("bert", "base")
    marker = AutoTokenizer.from_pretrained(directory).convert_tokens_to_ids("def")
    texts = SAMPLE_TEXTS[:-1] + ["def poisoned(): pass", "another def here"]
    bad = {f"t{len(texts) - 2}", f"t{len(texts) - 1}"}
    run = RunSpec(model=ModelSpec(uri=directory), batch=BatchSpec(token_budget=100_000))
    for task, reason in ((_FailsOnMarker(marker=marker), "model_error"),
                         (_NaNOnMarker(marker=marker), "nan_output")):
        with _pipeline() as p:
            out = p | beam.Create(_docs(texts)) | InferDocuments(task, run=run)
            assert_that(out["results"] | beam.Map(lambda r: r.id),
                        equal_to(sorted({f"t{i}" for i in range(len(texts))} - bad)), label="Good")
            assert_that(out["dead_letter"] | beam.Map(lambda r: (r.id, r.reason)),
                        equal_to([(b, reason) for b in sorted(bad)]), label="Bad")


def test_a_document_missing_windows_is_dead_lettered(tiny_model):
    """A document whose windows did not all come back (not produced by bertbeam's own stages,
    which keep a document's windows in one plan) is reported, never half-merged."""
    from bertbeam.core.engine import Engine

    spec = EngineSpec(ModelSpec(uri=tiny_model("bert", "base")), TokenizeSpec(max_length=16),
                      EmbedTask())
    engine = Engine.acquire(spec)
    long_text = " ".join(["word"] * 60)
    windows, _ = engine.encode(DocumentChunk(["long", "short"], [long_text, "short text"]))
    assert list(windows.n_windows[:2]) == [windows.n_windows[0]] * 2 and windows.n_windows[0] > 2
    out = engine.run(engine.plan(windows, BatchSpec()))
    keep = np.r_[0, np.flatnonzero(windows.doc == 1)]  # window 0 of "long", all of "short"
    lengths = windows.lengths[keep]
    partial = OutputChunk(
        WindowChunk(windows.docs, np.concatenate([windows.input_ids[windows.starts[j]:windows.starts[j + 1]]
                                                  for j in keep]),
                    np.r_[0, np.cumsum(lengths)], windows.doc[keep], windows.index[keep],
                    windows.n_windows[keep], windows.truncated[keep]),
        {k: v[keep] for k, v in out.values.items()}, {})
    results = engine.postprocess(partial)
    assert results.columns["id"] == ["short"]
    (dead,) = results.dead
    assert dead.id == "long" and dead.reason == "model_error"
    assert f"1 of {windows.n_windows[0]} windows" in dead.message


def test_inference_path_has_no_shuffle():
    """Read to write is one fused stage: no GroupByKey and no Flatten on the results path, so
    the local runner streams instead of holding every output between stages."""
    p = beam.Pipeline(runner=resolve_runner(PipelineOptions([])))
    docs = p | beam.Create([Document("a", "text")])
    _ = docs | "Infer" >> InferDocuments(EmbedTask(), validate=False)
    transforms = p.to_runner_api().components.transforms.values()
    urns = {t.unique_name: t.spec.urn for t in transforms if t.unique_name.startswith("Infer/")}
    shuffles = [n for n, u in urns.items() if u in (common_urns.primitives.GROUP_BY_KEY.urn,
                                                    common_urns.primitives.FLATTEN.urn)]
    assert shuffles == ["Infer/InferChunks/DeadLetter"]
