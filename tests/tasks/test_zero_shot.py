"""Zero-shot labels: nearest label by cosine on the embedded model, scores equal to
softmax(cosine / T) of sentence-transformers embeddings, long documents combined like
EmbedTask, labels embedded once per process, the labels-file format."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertbeam.tasks.embed import EmbedTask
from bertbeam.tasks.zero_shot import DEFAULT_TEMPLATE, ZeroShotTask, parse_labels
from tests.beam_helpers import documents, run_spec, run_variants
from tests.conftest import ARCHITECTURES, read_output, read_summary, run_cli, write_corpus

LABELS = ("sports", "politics", "cooking", "programming")
SEPARABLE = {
    "s1": ("The striker scored twice in the second half and the home team won the cup final.",
           "sports"),
    "s2": ("The Lakers beat the Celtics 110-102 after a strong fourth quarter.", "sports"),
    "p1": ("The senate passed the budget bill after a long debate between the two parties.",
           "politics"),
    "p2": ("The prime minister called an early election amid falling approval ratings.",
           "politics"),
    "c1": ("Whisk the eggs with sugar, fold in the flour and bake the cake for twenty minutes.",
           "cooking"),
    "c2": ("Simmer the tomato sauce with garlic and basil, then toss it with the pasta.", "cooking"),
    "g1": ("The function returns a list of integers; call sort() on it before the binary search.",
           "programming"),
    "g2": ("Python functions return values; write unit tests for your code.", "programming"),
}
LONG = ("The home team trained all week for the championship game. " * 12
        + "After the match the players thanked the fans in the stadium. " * 6)
TOLERANCE = 1e-4


def _softmax_cosines(docs: np.ndarray, labels: np.ndarray, temperature: float) -> np.ndarray:
    """The reference scores: softmax over labels of cosine(doc, label) / temperature."""
    docs = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    labels = labels / np.linalg.norm(labels, axis=1, keepdims=True)
    logits = docs.astype(np.float64) @ labels.T.astype(np.float64) / temperature
    scores = np.exp(logits - logits.max(axis=1, keepdims=True))
    return scores / scores.sum(axis=1, keepdims=True)


def _scores_by_label(row: dict) -> list[float]:
    by_label = {x["label"]: x["score"] for x in row["labels"]}
    return [by_label[label] for label in LABELS]


def test_bertbeam_label_zero_shot_gets_separable_texts_right(tmp_path):
    """`bertbeam label --task zero-shot --top-k 2` on the embedded model: every text gets its
    label, every id comes back once, the columns are the classify contract."""
    ids = list(SEPARABLE)
    path = write_corpus(tmp_path / "in" / "part-0.parquet",
                        {"id": ids, "text": [SEPARABLE[i][0] for i in ids]})
    out = tmp_path / "out"
    assert run_cli("label", "--task", "zero-shot", "--input", path, "--output", out,
                   "--labels", ",".join(LABELS), "--top-k", "2") == 0
    rows = {r["id"]: r for r in read_output(out)}
    assert sorted(rows) == sorted(ids)
    for doc_id, (_, expected) in SEPARABLE.items():
        row = rows[doc_id]
        assert row["label"] == expected, (doc_id, row["labels"])
        assert row["labels"][0] == {"label": row["label"], "score": row["score"]}
        assert len(row["labels"]) == 2 and row["labels"][1]["score"] < row["score"]
        assert row["score"] > 1 / len(LABELS)
        assert (row["n_chunks"], row["truncated"], row["model"]) == (
            1, False, "embedded:all-MiniLM-L6-v2")
    schema = pq.read_schema(next(out.glob("results-*.parquet")))
    assert schema.names == ["id", "label", "score", "labels", "n_chunks", "truncated", "model",
                            "text_fingerprint", "model_fingerprint", "job_fingerprint", "run_id"]
    assert schema.field("score").type == pa.float32()
    assert schema.field("labels").type.value_type == pa.struct(
        [("label", pa.string()), ("score", pa.float32())])
    summary = read_summary(out)
    assert summary["read"] == summary["written"] == len(ids)
    assert summary["dead_lettered"] == 0


def test_scores_are_softmax_of_sentence_transformers_cosines(tmp_path, embedded_model_dir):
    """Scores equal softmax(cos(ST(text), ST(label text)) / T) within 1e-4 for any batching;
    a chunked long document scores like its EmbedTask embedding (combined windows)."""
    from sentence_transformers import SentenceTransformer

    descriptions = (None, "elections, parliaments and governments", None, None)
    task = ZeroShotTask(labels=LABELS, descriptions=descriptions, temperature=0.1, top_k=4)
    assert task.label_texts[:2] == ("This text is about sports.",
                                    "politics: elections, parliaments and governments")
    texts = [text for text, _ in SEPARABLE.values()]
    docs = documents([*texts, LONG])
    variants = {
        "tiny-budget": (task, run_spec(embedded_model_dir, budget=64)),
        "large-budget": (task, run_spec(embedded_model_dir, budget=65536)),
        "chunked": (task, run_spec(embedded_model_dir, max_length=32, stride=8)),
        "chunked-embed": (EmbedTask(), run_spec(embedded_model_dir, max_length=32, stride=8)),
    }
    results = run_variants(tmp_path, docs, variants)
    assert not any(dead for _, dead in results.values())

    st = SentenceTransformer(embedded_model_dir, device="cpu")
    label_vectors = st.encode(list(task.label_texts))
    expected = _softmax_cosines(st.encode(texts), label_vectors, temperature=0.1)
    for name in ("tiny-budget", "large-budget"):
        rows, _ = results[name]
        assert sorted(rows) == sorted(d.id for d in docs)
        for i, doc in enumerate(docs[:-1]):
            row = rows[doc.id]
            np.testing.assert_allclose(_scores_by_label(row), expected[i], atol=TOLERANCE)
            assert [x["score"] for x in row["labels"]] == sorted(
                (x["score"] for x in row["labels"]), reverse=True)
            assert row["label"] == row["labels"][0]["label"]
            assert sum(x["score"] for x in row["labels"]) == pytest.approx(1.0, abs=1e-5)

    chunked, _ = results["chunked"]
    embedded, _ = results["chunked-embed"]
    assert chunked[docs[-1].id]["n_chunks"] == embedded[docs[-1].id]["n_chunks"] > 1
    combined = np.stack([embedded[d.id]["embedding"] for d in docs])
    expected = _softmax_cosines(combined, label_vectors, temperature=0.1)
    for i, doc in enumerate(docs):
        np.testing.assert_allclose(_scores_by_label(chunked[doc.id]), expected[i], atol=TOLERANCE)
    assert chunked[docs[-1].id]["label"] == "sports"


def _mean_pooled(model_dir: str, texts: tuple[str, ...]) -> np.ndarray:
    """Mean-pooled embeddings computed with plain transformers, as an independent reference."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    encoded = tokenizer(list(texts), padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def test_every_architecture_scores_like_its_embeddings(tmp_path, tiny_model):
    """BERT, DistilBERT, RoBERTa: chunked zero-shot scores equal softmax(cosine / T) of the
    EmbedTask embedding and independently computed label embeddings."""
    task = ZeroShotTask(labels=LABELS, temperature=1.0, top_k=4)
    docs = documents([text for text, _ in SEPARABLE.values()] + [LONG])
    variants = {}
    for arch in ARCHITECTURES:
        spec = run_spec(tiny_model(arch, "base"), budget=256, max_length=24, stride=4)
        variants[arch] = (task, spec)
        variants[f"{arch}-embed"] = (EmbedTask(), spec)
    results = run_variants(tmp_path, docs, variants)
    for arch in ARCHITECTURES:
        (rows, dead), (embedded, _) = results[arch], results[f"{arch}-embed"]
        assert not dead and sorted(rows) == sorted(d.id for d in docs), arch
        assert rows[docs[-1].id]["n_chunks"] > 1
        labels = _mean_pooled(tiny_model(arch, "base"), task.label_texts)
        combined = np.stack([embedded[d.id]["embedding"] for d in docs])
        expected = _softmax_cosines(combined, labels, temperature=1.0)
        for i, doc in enumerate(docs):
            np.testing.assert_allclose(_scores_by_label(rows[doc.id]), expected[i],
                                       atol=TOLERANCE, err_msg=f"{arch} {doc.id}")


def test_labels_are_embedded_once_per_process_and_model(tiny_model, monkeypatch):
    """Every batch and every copy of an equal task reuses the label matrix; other labels
    or another model get their own."""
    import torch

    from bertbeam.config import ModelSpec, TokenizeSpec
    from bertbeam.core.engine import Engine, EngineSpec
    from bertbeam.tasks import zero_shot

    calls = []
    real = zero_shot._embed_texts
    monkeypatch.setattr(zero_shot, "_embed_texts",
                        lambda loaded, embedder, texts: calls.append(texts) or real(loaded, embedder, texts))
    inputs = {"input_ids": torch.tensor([[2, 40, 41, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    loaded = Engine.acquire(EngineSpec(ModelSpec(uri=tiny_model("bert", "base"), device="cpu"),
                                       TokenizeSpec(), ZeroShotTask(labels=("a", "b"))))
    with torch.inference_mode():
        first = ZeroShotTask(labels=("a", "b")).forward(loaded, inputs)["embedding"]
        again = ZeroShotTask(labels=("a", "b")).forward(loaded, inputs)["embedding"]
        ZeroShotTask(labels=("a", "c")).forward(loaded, inputs)
    assert calls == [("This text is about a.", "This text is about b."),
                     ("This text is about a.", "This text is about c.")]
    assert first.shape == (1, 32 + 2)
    assert torch.equal(first, again)


def test_parse_labels_reads_labels_descriptions_and_skips_comments():
    text = "# topics\nsports: games, teams and athletes\n\n  politics  \ncooking:recipes: and food\n"
    labels, descriptions = parse_labels(text.splitlines())
    assert labels == ("sports", "politics", "cooking")
    assert descriptions == ("games, teams and athletes", None, "recipes: and food")
    task = ZeroShotTask(labels=labels, descriptions=descriptions)
    assert task.label_texts == ("sports: games, teams and athletes",
                                DEFAULT_TEMPLATE.format(label="politics"),
                                "cooking: recipes: and food")
    assert parse_labels(["a", "b:"]) == (("a", "b"), None)


@pytest.mark.parametrize("lines, message", [
    ([], "No labels found"),
    (["# only a comment", "  "], "No labels found"),
    (["sports", ": no label"], "Line 2"),
    (["sports", "politics", "sports: again"], "'sports' appears twice"),
])
def test_parse_labels_rejects_bad_files(lines, message):
    with pytest.raises(ValueError, match=message):
        parse_labels(lines)


@pytest.mark.parametrize("options, error, message", [
    ({"labels": ()}, ValueError, "non-empty sequence"),
    ({"labels": ("a", " ")}, ValueError, "non-empty strings"),
    ({"labels": "sports,politics"}, TypeError, "tuple or list"),
    ({"labels": ("a", "b", "a")}, ValueError, r"\['a'\] appear more than once"),
    ({"labels": ("a", "b"), "descriptions": ("x",)}, ValueError, "one entry per label"),
    ({"labels": ("a", "b"), "temperature": 0}, ValueError, "positive number, got 0"),
    ({"labels": ("a", "b"), "temperature": float("nan")}, ValueError, "positive number"),
    ({"labels": ("a", "b"), "top_k": 3}, ValueError, r"from 1 to the number of labels \(2\), got 3"),
    ({"labels": ("a", "b"), "template": "about {name}"}, ValueError, "must contain '{label}'"),
    ({"labels": ("a", "b"), "chunk_pooling": "max"}, ValueError, "Valid values are: 'mean', 'first'"),
    ({"labels": ("a", "b"), "pooling": "sum"}, ValueError, "Invalid pooling"),
])
def test_invalid_options_fail_at_construction(options, error, message):
    with pytest.raises(error, match=message):
        ZeroShotTask(**options)


def test_lists_become_tuples_and_the_task_pickles():
    import pickle

    task = ZeroShotTask(labels=["a", "b"], descriptions=["x", None], top_k=2)
    assert task.labels == ("a", "b") and task.descriptions == ("x", None)
    assert pickle.loads(pickle.dumps(task)) == task
    assert ZeroShotTask.name == "zero-shot"
    assert task.schema(None).names == ["id", "label", "score", "labels", "n_chunks", "truncated",
                                       "model"]
