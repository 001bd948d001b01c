"""``bertbeam evaluate``: scores equal scikit-learn's and seqeval's computed independently on
small cases, ids missing on either side counted, predicted character spans turned into
word tags, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertbeam.training import EvalConfig, evaluate
from bertbeam.training.evaluate import entities_to_tags
from tests.conftest import run_cli, write_corpus

GOLD = {"g1": "cat", "g2": "cat", "g3": "dog", "g4": "dog", "g5": "bird", "g6": "cat",
        "g7": "dog", "only-gold": "cat"}
PREDICTED = {"g1": "cat", "g2": "dog", "g3": "dog", "g4": "dog", "g5": "cat", "g6": "cat",
             "g7": "bird", "only-predicted": "dog"}


def _predictions(path: Path, labels: dict[str, str]) -> str:
    """A `bertbeam label --task classify` results file (the columns evaluate reads)."""
    return write_corpus(path, {
        "id": list(labels), "label": list(labels.values()), "score": [0.9] * len(labels),
        "labels": [[{"label": v, "score": 0.9}] for v in labels.values()]})


def test_classify_scores_equal_sklearn_and_missing_ids_are_counted(tmp_path):
    """Accuracy, macro/micro F1 and per-class scores over the 7 common ids equal sklearn's;
    one id on each side only is counted and named; _EVAL.json and a PNG are written."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    preds = _predictions(tmp_path / "out" / "results-00000.parquet", PREDICTED)
    gold = write_corpus(tmp_path / "gold.parquet", {"id": list(GOLD), "label": list(GOLD.values())})
    report = evaluate(EvalConfig(task="classify", predictions=str(tmp_path / "out" / "results-*.parquet"),
                                 gold=gold))
    assert preds
    common = [k for k in GOLD if k in PREDICTED]
    y, p = [GOLD[k] for k in common], [PREDICTED[k] for k in common]
    s = report["scores"]
    assert report["compared"] == 7
    assert s["accuracy"] == pytest.approx(accuracy_score(y, p)) == pytest.approx(4 / 7)
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert s["micro_f1"] == pytest.approx(f1_score(y, p, average="micro"))
    precision, recall, f1, support = precision_recall_fscore_support(y, p, labels=["bird", "cat", "dog"])
    assert [s["per_class"][c]["support"] for c in ("bird", "cat", "dog")] == list(support) == [1, 3, 3]
    assert [s["per_class"][c]["precision"] for c in ("bird", "cat", "dog")] == pytest.approx(precision)
    assert [s["per_class"][c]["recall"] for c in ("bird", "cat", "dog")] == pytest.approx(recall)
    assert s["per_class"]["dog"]["f1"] == pytest.approx(f1[2]) == pytest.approx(2 / 3)
    assert report["missing"] == {
        "gold_without_prediction": {"count": 1, "first_ids": ["only-gold"]},
        "prediction_without_gold": {"count": 1, "first_ids": ["only-predicted"]}}
    written = json.loads((tmp_path / "out" / "_EVAL.json").read_text())
    assert written["scores"] == s
    assert (tmp_path / "out" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gold_rows_without_label_are_skipped_and_counted(tmp_path, capsys):
    gold = write_corpus(tmp_path / "gold.parquet",
                        {"id": ["a", "b", "c"], "label": ["x", None, ""]})
    preds = _predictions(tmp_path / "p.parquet", {"a": "x", "b": "x", "c": "y"})
    assert run_cli("evaluate", "--task", "classify", "--predictions", preds, "--gold", gold,
                   "--output", tmp_path / "eval") == 0
    out = capsys.readouterr().out
    assert "compared 1 rows" in out and "skipped 2 gold rows without a label" in out
    report = json.loads((tmp_path / "eval" / "_EVAL.json").read_text())
    assert report["skipped"] == {"gold rows without a label": {"rows": 2, "first_ids": ["b", "c"]}}


def test_multi_label_scores_equal_sklearn(tmp_path):
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    gold_rows = [["a"], ["a", "b"], ["c"], ["b"]]
    pred_rows = [["a"], ["a"], ["c", "b"], []]
    gold = write_corpus(tmp_path / "gold.parquet", {"id": list("wxyz"), "label": gold_rows})
    preds = write_corpus(tmp_path / "p.parquet", {"id": list("wxyz"), "labels": [
        [{"label": x, "score": 0.9} for x in row] for row in pred_rows]})
    s = evaluate(EvalConfig(task="classify", predictions=preds, gold=gold, multi_label=True,
                            output=str(tmp_path / "e")))["scores"]
    binarizer = MultiLabelBinarizer(classes=["a", "b", "c"])
    y, p = binarizer.fit_transform(gold_rows), binarizer.transform(pred_rows)
    assert s["accuracy"] == pytest.approx(0.25)  # only the first row is exactly right
    assert s["micro_f1"] == pytest.approx(f1_score(y, p, average="micro"))
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))


def _entities(tokens: list[str], tags: list[str]) -> list[dict]:
    """What `bertbeam label --task ner` writes for a text " ".join(tokens) whose words got
    ``tags``: one entity per B-/I- run, character spans, the words as its text."""
    entities, at = [], 0
    for token, tag in zip(tokens, tags, strict=True):
        start, end = at, at + len(token)
        at = end + 1
        if tag.startswith("I-") and entities and entities[-1]["entity_group"] == tag[2:] \
                and entities[-1]["end"] == start - 1:
            entities[-1].update(end=end, word=entities[-1]["word"] + " " + token)
        elif tag != "O":
            entities.append({"entity_group": tag[2:], "score": 0.9, "word": token,
                             "start": start, "end": end})
    return entities


NER_GOLD = [
    (["John", "Smith", "lives", "in", "New", "York", "."],
     ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"]),
    (["Ada", "met", "Alan", "in", "London"], ["B-PER", "O", "B-PER", "O", "B-LOC"]),
    (["Nothing", "here"], ["O", "O"]),
]
NER_PREDICTED = [
    ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "O"],  # New York cut short: wrong boundary
    ["B-PER", "O", "B-LOC", "O", "B-LOC"],  # Alan as a place
    ["B-PER", "O"],  # a spurious person
]


def test_ner_scores_equal_seqeval_on_word_tags(tmp_path):
    """Predicted entities (character spans of " ".join(tokens)) scored against gold tokens and
    tags give seqeval's entity-level precision, recall and F1 on the word tags."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    gold_tags = [tags for _, tags in NER_GOLD]
    gold = write_corpus(tmp_path / "gold.parquet", {
        "id": ["s0", "s1", "s2"], "tokens": [t for t, _ in NER_GOLD], "tags": gold_tags})
    preds = write_corpus(tmp_path / "p.parquet", {"id": ["s0", "s1", "s2"], "entities": [
        _entities(tokens, tags) for (tokens, _), tags in zip(NER_GOLD, NER_PREDICTED, strict=True)]})
    report = evaluate(EvalConfig(task="ner", predictions=preds, gold=gold, output=str(tmp_path / "e")))
    s = report["scores"]
    assert s["precision"] == pytest.approx(precision_score(gold_tags, NER_PREDICTED)) == pytest.approx(3 / 6)
    assert s["recall"] == pytest.approx(recall_score(gold_tags, NER_PREDICTED)) == pytest.approx(3 / 5)
    assert s["f1"] == pytest.approx(f1_score(gold_tags, NER_PREDICTED))
    per_type = classification_report(gold_tags, NER_PREDICTED, output_dict=True)
    assert s["per_type"]["LOC"]["f1"] == pytest.approx(per_type["LOC"]["f1-score"])
    assert s["per_type"]["PER"]["support"] == per_type["PER"]["support"] == 3
    assert not (tmp_path / "e" / "confusion_matrix.png").exists()


def test_predicted_spans_become_word_tags():
    """A word takes the entity covering its first character; an entity over two words is B
    then I; a sub-word entity that starts inside a word does not tag it; a raw tag as the
    group (aggregation none) is kept."""
    spans = [(0, 5), (6, 11), (12, 18), (19, 24)]  # "Guido Rossum worked there"
    entities = [{"entity_group": "PER", "start": 0, "end": 11},
                {"entity_group": "ORG", "start": 14, "end": 18},
                {"entity_group": "B-LOC", "start": 19, "end": 21}]
    assert entities_to_tags(spans, entities) == ["B-PER", "I-PER", "O", "B-LOC"]
    assert entities_to_tags(spans, []) == ["O"] * 4


def test_ner_gold_text_column_locates_the_tokens(tmp_path):
    """With a gold text column, words are found in it (no spaces before punctuation here)."""
    text = "Paris, France."
    tokens, tags = ["Paris", ",", "France", "."], ["B-LOC", "O", "B-LOC", "O"]
    gold = write_corpus(tmp_path / "gold.parquet",
                        {"id": ["x"], "text": [text], "tokens": [tokens], "tags": [tags]})
    entities = [{"entity_group": "LOC", "score": 0.9, "word": "Paris", "start": 0, "end": 5},
                {"entity_group": "LOC", "score": 0.9, "word": "France", "start": 7, "end": 13}]
    preds = write_corpus(tmp_path / "p.parquet", {"id": ["x"], "entities": [entities]})
    s = evaluate(EvalConfig(task="ner", predictions=preds, gold=gold, output=str(tmp_path / "e")))["scores"]
    assert (s["precision"], s["recall"]) == (1.0, 1.0)


@pytest.mark.parametrize(("gold_columns", "message"), [
    ({"id": ["a", "a"], "label": ["x", "y"]}, "has id 'a' more than once; ids must be unique."),
    ({"key": ["a"], "label": ["x"]}, "has no column 'id'; its columns are: key, label."),
    ({"id": ["zz"], "label": ["x"]}, "No row to compare: 1 gold ids, 1 predicted ids, 0 in common."),
])
def test_bad_gold_is_a_one_line_error(tmp_path, capsys, gold_columns, message):
    gold = write_corpus(tmp_path / "gold.parquet", gold_columns)
    preds = _predictions(tmp_path / "p.parquet", {"a": "x"})
    assert run_cli("evaluate", "--task", "classify", "--predictions", preds, "--gold", gold) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bertbeam evaluate: error: ") and message in err and "\n" not in err, err
