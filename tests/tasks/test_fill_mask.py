"""Fill-mask: parity with transformers' fill-mask pipeline; texts without a mask are dead-lettered."""

from __future__ import annotations

import numpy as np
import pytest

from bertbeam.tasks.fill_mask import FillMaskTask
from tests.beam_helpers import documents, run_spec, run_variants
from tests.conftest import ARCHITECTURES, SAMPLE_TEXTS

BUDGETS = (64, 65536)
TOLERANCE = 1e-4
TOP_K = 3


def _masked_texts(mask: str) -> list[str]:
    """SAMPLE_TEXTS with one word masked in each (the word at a third of the text)."""
    out = []
    for text in SAMPLE_TEXTS:
        words = text.split(" ")
        i = len(words) // 3
        out.append(" ".join(words[:i] + [mask] + words[i + 1:]))
    return out


def _mask_token(model_dir: str) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).mask_token


def _reference(model_dir: str, texts: list[str]) -> list:
    from transformers import pipeline

    return pipeline("fill-mask", model=model_dir, device="cpu", top_k=TOP_K)(texts)


def _assert_predictions_match(predictions: list[dict], expected: list[dict], mask_index: int) -> None:
    assert [p["token_str"] for p in predictions] == [e["token_str"] for e in expected]
    assert [p["sequence"] for p in predictions] == [e["sequence"] for e in expected]
    assert {p["mask_index"] for p in predictions} == {mask_index}
    np.testing.assert_allclose([p["score"] for p in predictions], [e["score"] for e in expected],
                               atol=TOLERANCE)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_matches_transformers_pipeline(tmp_path, tiny_model, arch):
    """Same tokens, sequences and scores (within 1e-4) as pipeline('fill-mask', top_k=3), for
    a tiny and a large token budget."""
    model = tiny_model(arch, "fill-mask")
    texts = _masked_texts(_mask_token(model))
    expected = _reference(model, texts)
    docs = documents(texts)
    variants = {str(b): (FillMaskTask(top_k=TOP_K), run_spec(model, budget=b, long_docs="truncate"))
                for b in BUDGETS}
    for name, (rows, dead) in run_variants(tmp_path, docs, variants).items():
        assert not dead, name
        assert sorted(rows) == sorted(d.id for d in docs)
        for doc, ref in zip(docs, expected, strict=True):
            assert set(rows[doc.id]) == {"id", "predictions", "model"}
            _assert_predictions_match(rows[doc.id]["predictions"], ref, mask_index=0)


def test_several_masks_are_listed_mask_by_mask(tmp_path, tiny_model):
    """Two masks: top-k of the first mask (mask_index 0), then of the second (1), each as
    transformers lists them; a text with no mask goes to the dead letter as bad_task_input."""
    model = tiny_model("bert", "fill-mask")
    mask = _mask_token(model)
    two = f"The {mask} sat on the {mask} today."
    expected = _reference(model, [two])  # one list per mask
    assert len(expected) == 2
    docs = documents([two, "No mask here."])
    task = FillMaskTask(top_k=TOP_K)
    ((rows, dead),) = run_variants(tmp_path, docs, {
        "two": (task, run_spec(model, long_docs="truncate"))}).values()
    predictions = rows["d0"]["predictions"]
    assert len(predictions) == 2 * TOP_K
    _assert_predictions_match(predictions[:TOP_K], expected[0], mask_index=0)
    _assert_predictions_match(predictions[TOP_K:], expected[1], mask_index=1)
    assert set(dead) == {"d1"}
    assert (dead["d1"]["stage"], dead["d1"]["reason"]) == ("postprocess", "bad_task_input")
    assert "no mask token '[MASK]'" in dead["d1"]["message"]
    assert dead["d1"]["preview"] == "No mask here."


def test_mask_cut_off_by_truncation_is_dead_lettered(tmp_path, tiny_model):
    model = tiny_model("roberta", "fill-mask")
    text = " ".join(SAMPLE_TEXTS[:4]) + " <mask>."
    ((rows, dead),) = run_variants(tmp_path, documents([text]), {
        "t": (FillMaskTask(), run_spec(model, max_length=16, long_docs="truncate"))}).values()
    assert not rows
    assert dead["d0"]["reason"] == "bad_task_input"
    assert "truncated" in dead["d0"]["message"]


def test_chunking_is_refused_at_construction_and_truncate_is_the_default(tiny_model):
    """fill-mask reads first windows only: asking it to chunk fails when the pipeline is
    built (as the CLI refuses the flag), and a RunSpec-less transform truncates."""
    from bertbeam.beam.transforms import LabelDocuments

    model = tiny_model("bert", "fill-mask")
    with pytest.raises(ValueError, match="long_docs='truncate'"):
        LabelDocuments(FillMaskTask(), run=run_spec(model, max_length=16, long_docs="chunk", stride=4))
    assert LabelDocuments("fill-mask").run.tokenize.long_docs == "truncate"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_on_mask_positions_equals_full_logits(tiny_model, arch):
    """The language-model head applied to masked positions only gives the full model's logits."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from bertbeam.tasks.fill_mask import _mask_logits

    model_dir = tiny_model(arch, "fill-mask")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    mask = tokenizer.mask_token
    inputs = tokenizer([f"a {mask} b {mask}", f"the {mask} sat on the mat"], padding=True,
                       return_tensors="pt", return_token_type_ids=False)
    rows, cols = (inputs["input_ids"] == tokenizer.mask_token_id).nonzero(as_tuple=True)
    with torch.inference_mode():
        full = model(**inputs).logits[rows, cols]
        torch.testing.assert_close(_mask_logits(model, dict(inputs), rows, cols), full)


def test_top_k_must_be_positive():
    with pytest.raises(ValueError, match="top_k must be a positive integer, got -1"):
        FillMaskTask(top_k=-1)
