"""Named entities: parity with transformers' token-classification pipeline for every
aggregation strategy, and long documents merged into one token sequence."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from bertbeam.tasks.entities import EntitiesTask
from tests.beam_helpers import documents, run_spec, run_variants
from tests.conftest import ARCHITECTURES, SAMPLE_TEXTS

# The reference pipeline warns that byte-level BPE (RoBERTa) has no word boundaries.
pytestmark = pytest.mark.filterwarnings("ignore:Tokenizer does not support real words")

STRATEGIES = ("none", "simple", "first", "average", "max")
BUDGETS = (64, 65536)  # one window per batch .. the whole corpus in one batch
TOLERANCE = 1e-4
TEXTS = SAMPLE_TEXTS + [
    "John Smith met Maria Garcia at the United Nations headquarters in New York.",
    "Guido van Rossum created Python while working at CWI in Amsterdam.",
]
LONG_TEXT = " ".join(SAMPLE_TEXTS[:5] + TEXTS[-2:])


def _pipeline(model_dir: str, **kwargs):
    from transformers import pipeline

    return pipeline("token-classification", model=model_dir, device="cpu", **kwargs)


def _key(entity: dict) -> tuple:
    return (entity.get("entity_group", entity.get("entity")), entity["word"], entity["start"],
            entity["end"])


def _assert_entities_match(got: list[dict], expected: list[dict], doc_id: str) -> None:
    assert [_key(e) for e in got] == [_key(e) for e in expected], doc_id
    np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in expected],
                               atol=TOLERANCE, err_msg=doc_id)


def _surface(tokenizer, text: str) -> str:
    """``text`` as the tokenizer sees it (its normalizer: lower case, accents stripped),
    without whitespace or the replacement character of a split multi-byte character."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    text = normalizer.normalize_str(text) if normalizer else text
    text = unicodedata.normalize("NFC", text)
    return "".join(c for c in text if not c.isspace() and c != "\ufffd")


def _assert_offsets_point_at_words(tokenizer, text: str, entities: list[dict]) -> None:
    """``text[start:end]`` is the entity's word, modulo the tokenizer's normalization (and
    the "##" a WordPiece word keeps when it starts with a continuation token)."""
    prefix = getattr(tokenizer.backend_tokenizer.model, "continuing_subword_prefix", None)
    assert entities
    for e in entities:
        assert 0 <= e["start"] <= e["end"] <= len(text), e  # byte-level "Ġ" alone is empty
        word = e["word"].removeprefix(prefix) if prefix else e["word"]
        assert _surface(tokenizer, word) == _surface(tokenizer, text[e["start"]:e["end"]]), e


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_matches_token_classification_pipeline(tmp_path, tiny_model, arch):
    """For every strategy: identical entity groups, words and offsets, scores within 1e-4 of
    pipeline(aggregation_strategy=...), with batches of one window up to one for everything;
    every id once, DESIGN columns, and offsets that point at the words."""
    from transformers import AutoTokenizer

    model = tiny_model(arch, "ner")
    pipe = _pipeline(model)
    expected = {s: pipe(TEXTS, aggregation_strategy=s) for s in STRATEGIES}
    docs = documents(TEXTS)
    # Batching changes only the logits, so two strategies suffice for the large budget.
    runs = [(s, BUDGETS[0]) for s in STRATEGIES] + [(s, BUDGETS[1]) for s in ("simple", "max")]
    variants = {f"{s}-{b}": (EntitiesTask(aggregation=s), run_spec(model, budget=b))
                for s, b in runs}
    tokenizer = AutoTokenizer.from_pretrained(model)
    for name, (rows, dead) in run_variants(tmp_path, docs, variants).items():
        strategy = name.split("-")[0]
        assert not dead, name
        assert sorted(rows) == sorted(d.id for d in docs)
        for doc, ref in zip(docs, expected[strategy], strict=True):
            row = rows[doc.id]
            _assert_entities_match(row["entities"], ref, f"{name} {doc.id}")
            assert (row["n_chunks"], row["truncated"], row["model"]) == (1, False, model)
            assert set(row) == {"id", "entities", "n_chunks", "truncated", "model"}
        if strategy != "none":  # "none" words are raw tokens ("##ing", "Ġcat")
            for doc in docs[-3:]:
                _assert_offsets_point_at_words(tokenizer, doc.text, rows[doc.id]["entities"])


def _document_tokens(model_dir: str, text: str, max_length: int, stride: int):
    """The document's tokens (no special tokens) and, per window of ``max_length`` tokens
    with ``stride``, its logits and the document positions of its tokens. No bertbeam."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    whole = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    content = max_length - 2  # [CLS] ... [SEP] or <s> ... </s>
    windows, first = [], 0
    while True:
        ids = whole["input_ids"][first:first + content]
        with torch.inference_mode():
            inputs = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
            logits = model(input_ids=torch.tensor([inputs]))
        windows.append((np.arange(first, first + len(ids)), logits.logits[0, 1:-1].numpy()))
        if first + content >= len(whole["input_ids"]):
            return tokenizer, whole, windows
        first += content - stride


def _merged_logits(n_tokens: int, windows) -> np.ndarray:
    """Each token's logits from the window where it is farthest from an edge (first on ties)."""
    best = np.full(n_tokens, -1)
    merged = np.zeros((n_tokens, windows[0][1].shape[1]), np.float32)
    for positions, logits in windows:
        local = np.arange(len(positions))
        distance = np.minimum(local, len(positions) - 1 - local)
        better = distance > best[positions]
        best[positions[better]] = distance[better]
        merged[positions[better]] = logits[better]
    return merged


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_long_document_is_merged_then_aggregated_over_the_whole_text(tmp_path, tiny_model, arch):
    """A document chunked into windows of 32 tokens (stride 8) gives the entities that the
    pipeline's own aggregation finds on the document's tokens with each token's logits taken
    from the window where it is farther from the edge; offsets point into the whole text, an
    entity crosses a window border, and short documents in the same run match the pipeline."""
    import torch
    from transformers.pipelines.token_classification import AggregationStrategy

    model = tiny_model(arch, "ner")
    tokenizer, whole, windows = _document_tokens(model, LONG_TEXT, max_length=32, stride=8)
    assert len(windows) >= 4
    merged = _merged_logits(len(whole["input_ids"]), windows)
    pipe = _pipeline(model)
    short = [t for t in TEXTS if len(tokenizer(t)["input_ids"]) <= 32]
    docs = documents([LONG_TEXT, *short])
    spec = run_spec(model, budget=128, max_length=32, stride=8)
    variants = {s: (EntitiesTask(aggregation=s), spec) for s in ("simple", "first")}
    for strategy, (rows, dead) in run_variants(tmp_path, docs, variants).items():
        assert not dead
        # The pipeline's post-processing, on the whole document as if it were one window.
        expected = pipe.postprocess([{
            "logits": torch.from_numpy(merged)[None], "sentence": LONG_TEXT,
            "input_ids": torch.tensor([whole["input_ids"]]),
            "offset_mapping": torch.tensor([whole["offset_mapping"]]),
            "special_tokens_mask": torch.zeros(1, len(merged), dtype=torch.long),
        }], aggregation_strategy=AggregationStrategy[strategy.upper()])
        row = rows["d0"]
        _assert_entities_match(row["entities"], expected, strategy)
        assert (row["n_chunks"], row["truncated"]) == (len(windows), False)
        _assert_offsets_point_at_words(tokenizer, LONG_TEXT, row["entities"])
        borders = [whole["offset_mapping"][positions[-1]][1] for positions, _ in windows[:-1]]
        assert any(e["start"] < b < e["end"] for e in row["entities"] for b in borders), strategy
        references = pipe(short, aggregation_strategy=strategy)
        for i, ref in enumerate(references, start=1):
            assert rows[f"d{i}"]["n_chunks"] == 1
            _assert_entities_match(rows[f"d{i}"]["entities"], ref, f"{strategy} d{i}")


def test_truncate_matches_the_pipeline_truncated_to_the_same_length(tmp_path, tiny_model):
    """long_docs='truncate' keeps the first window: the pipeline with a tokenizer limited to
    32 tokens gives the same entities."""
    from transformers import AutoTokenizer

    model = tiny_model("distilbert", "ner")
    pipe = _pipeline(model, tokenizer=AutoTokenizer.from_pretrained(model, model_max_length=32))
    expected = pipe(LONG_TEXT, aggregation_strategy="average")
    spec = run_spec(model, max_length=32, long_docs="truncate")
    ((rows, dead),) = run_variants(tmp_path, documents([LONG_TEXT]), {
        "t": (EntitiesTask(aggregation="average"), spec)}).values()
    assert not dead
    _assert_entities_match(rows["d0"]["entities"], expected, "d0")
    assert (rows["d0"]["n_chunks"], rows["d0"]["truncated"]) == (1, True)


def test_ignore_labels_drops_only_those_labels(tmp_path, tiny_model):
    """ignore_labels=("O", "PER") drops PER groups too, as pipeline(ignore_labels=[...])."""
    model = tiny_model("bert", "ner")
    pipe = _pipeline(model)
    default = pipe(TEXTS, aggregation_strategy="simple")
    assert any(e["entity_group"] == "PER" for ref in default for e in ref)
    expected = pipe(TEXTS, aggregation_strategy="simple", ignore_labels=["O", "PER"])
    ((rows, _),) = run_variants(tmp_path, documents(TEXTS), {
        "no-per": (EntitiesTask(ignore_labels=("O", "PER")), run_spec(model))}).values()
    for i, ref in enumerate(expected):
        _assert_entities_match(rows[f"d{i}"]["entities"], ref, f"d{i}")
        assert all(e["entity_group"] != "PER" for e in rows[f"d{i}"]["entities"])


@pytest.mark.slow
def test_multi_processing_runner_gives_the_same_entities(tmp_path, tiny_model):
    """Two worker processes: the task pickles, models load in workers, entities unchanged."""
    model = tiny_model("roberta", "ner")
    expected = _pipeline(model)(TEXTS, aggregation_strategy="max")
    args = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")
    ((rows, dead),) = run_variants(tmp_path, documents(TEXTS), {
        "mp": (EntitiesTask(aggregation="max"), run_spec(model, budget=64))},
        beam_args=args).values()
    assert not dead and len(rows) == len(TEXTS)
    for i, ref in enumerate(expected):
        _assert_entities_match(rows[f"d{i}"]["entities"], ref, f"d{i}")


@pytest.mark.parametrize(("options", "message"), [
    ({"aggregation": "mean"},
     "Invalid aggregation: 'mean'. Valid values are: 'none', 'simple', 'first', 'average', 'max'"),
    ({"ignore_labels": "O"}, "ignore_labels must be a sequence of label strings, got 'O'"),
])
def test_invalid_options_say_what_is_valid(options, message):
    with pytest.raises(ValueError, match=message):
        EntitiesTask(**options)


def test_schema_is_the_contract():
    import pyarrow as pa

    schema = EntitiesTask().schema(None)
    assert schema.names == ["id", "entities", "n_chunks", "truncated", "model"]
    entity = schema.field("entities").type.value_type
    assert [(f.name, f.type) for f in entity] == [
        ("entity_group", pa.string()), ("score", pa.float32()), ("word", pa.string()),
        ("start", pa.int32()), ("end", pa.int32())]
