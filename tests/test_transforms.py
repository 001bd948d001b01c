"""The library API: transforms composed with a user's own I/O, compact outputs, and the
model step's isolation of bad rows."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, ClassVar

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from bertbeam import (
    BatchByTokens,
    BatchSpec,
    Document,
    EmbedTask,
    InferDocuments,
    LabelDocuments,
    ModelSpec,
    RunModel,
    RunSpec,
    Tokenize,
    TokenizeSpec,
)
from bertbeam.runners import resolve_runner
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
        assert_that(out["results"] | beam.Map(lambda r: (r["id"], len(r["labels"]))),
                    equal_to([(f"t{i}", 2) for i in range(len(SAMPLE_TEXTS))]), label="Rows")
        assert_that(out["dead_letter"], equal_to([]), label="NoDeadLetter")


def test_stage_transforms_compose_and_outputs_are_compact(tiny_model):
    """Tokenize | BatchByTokens | RunModel by hand: one WindowOutput per window, whose arrays
    own their memory (never views of the batch) and pickle to one window's size."""
    model = ModelSpec(uri=tiny_model("bert", "base"))

    def check(output):
        arrays = output.values.values()
        compact = all(a.base is None and a.flags.owndata for a in arrays)
        return output.window.doc_id, compact, len(pickle.dumps(output)) < 2_000

    with _pipeline() as p:
        windows = (p | beam.Create(_docs(SAMPLE_TEXTS))
                   | Tokenize(model=model, tokenize=TokenizeSpec()))["windows"]
        outputs = (windows | BatchByTokens(BatchSpec(token_budget=100_000))
                   | RunModel(model=model, task=EmbedTask()))
        assert_that(outputs | beam.Map(check),
                    equal_to([(f"t{i}", True, True) for i in range(len(SAMPLE_TEXTS))]))


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
            assert_that(out["results"] | beam.Map(lambda r: r["id"]),
                        equal_to(sorted({f"t{i}" for i in range(len(texts))} - bad)), label="Good")
            assert_that(out["dead_letter"] | beam.Map(lambda r: (r["id"], r["reason"])),
                        equal_to([(b, reason) for b in sorted(bad)]), label="Bad")
