"""The library API: transforms composed with a user's own I/O, compact outputs, and the
model step's isolation of bad rows."""

from __future__ import annotations

import pickle
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
    Document,
    EmbedTask,
    EngineSpec,
    InferDocuments,
    LabelDocuments,
    ModelSpec,
    RunModel,
    RunSpec,
    Tokenize,
    TokenizeSpec,
)
from bertbeam.postprocess import MergeWindows, _MergeWindowsFn, _PostprocessFn
from bertbeam.records import Window, WindowOutput
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
        assert_that(out["results"] | beam.Map(lambda r: (r.id, len(r.labels))),
                    equal_to([(f"t{i}", 2) for i in range(len(SAMPLE_TEXTS))]), label="Rows")
        assert_that(out["dead_letter"], equal_to([]), label="NoDeadLetter")


def test_stage_transforms_compose_and_outputs_are_compact(tiny_model):
    """Tokenize | BatchByTokens | RunModel by hand: one WindowOutput per window, whose arrays
    own their memory (never views of the batch) and pickle to one window's size."""
    run = RunSpec(model=ModelSpec(uri=tiny_model("bert", "base")))

    def check(output):
        arrays = output.values.values()
        compact = all(a.base is None and a.flags.owndata for a in arrays)
        return output.window.doc_id, compact, len(pickle.dumps(output)) < 2_000

    with _pipeline() as p:
        windows = (p | beam.Create(_docs(SAMPLE_TEXTS))
                   | Tokenize(EmbedTask(), run=run))["windows"]
        outputs = (windows | BatchByTokens(BatchSpec(token_budget=100_000))
                   | RunModel(EmbedTask(), run=run))
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
            assert_that(out["results"] | beam.Map(lambda r: r.id),
                        equal_to(sorted({f"t{i}" for i in range(len(texts))} - bad)), label="Good")
            assert_that(out["dead_letter"] | beam.Map(lambda r: (r.id, r.reason)),
                        equal_to([(b, reason) for b in sorted(bad)]), label="Bad")


def _output(doc_id: str, index: int, n_windows: int) -> WindowOutput:
    window = Window(doc_id=doc_id, index=index, n_windows=n_windows,
                    input_ids=np.arange(3, dtype=np.int32), type_ids=None, offsets=None,
                    sequence_ids=None)
    return WindowOutput(window, {"x": np.float32([index])})


def test_merge_windows_gathers_each_document_in_window_order():
    arriving = [_output("a", 2, 3), _output("b", 0, 1), _output("c", 1, 2), _output("a", 0, 3),
                _output("c", 0, 2), _output("a", 1, 3)]
    with _pipeline() as p:
        merged = (p | beam.Create(arriving) | MergeWindows()
                  | beam.Map(lambda outs: (outs[0].window.doc_id, [o.window.index for o in outs])))
        assert_that(merged, equal_to([("a", [0, 1, 2]), ("b", [0]), ("c", [0, 1])]))


def test_a_document_cut_short_comes_out_of_merge_windows_and_is_dead_lettered(tiny_model):
    """Windows missing at the end of a bundle (not produced by bertbeam's own stages, which
    keep a document in one bundle) still reach Postprocess, which reports them."""
    fn = _MergeWindowsFn()
    fn.start_bundle()
    assert list(fn.process(_output("a", 1, 2))) == []
    left = [v.value for v in fn.finish_bundle()]
    assert [[o.window.index for o in outs] for outs in left] == [[1]]
    spec = EngineSpec(ModelSpec(uri=tiny_model("bert", "base")), TokenizeSpec(), EmbedTask())
    post = _PostprocessFn(spec, schema=None)
    post.setup()
    (dead,) = list(post.process(left[0]))
    assert dead.tag == "dead_letter" and dead.value.reason == "model_error"
    assert "1 of 2 windows" in dead.value.message


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
    assert shuffles == ["Infer/DeadLetter"]
