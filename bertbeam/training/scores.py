"""Scores of predictions against gold labels: scikit-learn for classes, seqeval for entities.

Both ``bertbeam train`` (each epoch) and ``bertbeam evaluate`` score through these
functions, so a model's numbers mean the same in both places.
"""

from __future__ import annotations

from typing import Any


def _per_class(names: list[str], precision, recall, f1, support) -> dict[str, dict[str, float]]:
    return {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)}


def class_scores(gold: list[str], predicted: list[str]) -> dict[str, Any]:
    """Accuracy, macro and micro F1 and per-class precision / recall / F1 / support of
    single-label predictions; classes are the union of gold and predicted names."""
    # optional: bertbeam[train]
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    names = sorted(set(gold) | set(predicted))
    per = precision_recall_fscore_support(gold, predicted, labels=names, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, labels=names, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(gold, predicted, labels=names, average="micro", zero_division=0)),
        "per_class": _per_class(names, *per),
    }


def multi_label_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    """Subset accuracy (all labels of a row right), macro and micro F1 and per-label scores
    of multi-label predictions."""
    # optional: bertbeam[train]
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
    from sklearn.preprocessing import MultiLabelBinarizer  # optional: bertbeam[train]

    names = sorted({x for row in gold + predicted for x in row})
    binarizer = MultiLabelBinarizer(classes=names)
    y_true, y_pred = binarizer.fit_transform(gold), binarizer.transform(predicted)
    per = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "per_class": _per_class(names, *per),
    }


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    """Entity-level micro precision / recall / F1 and per-type scores of BIO tag sequences,
    with seqeval's default (CoNLL) semantics: an entity counts when its type and its first
    and last word are right."""
    # optional: bertbeam[train]
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    per_type = {name: {"precision": float(r["precision"]), "recall": float(r["recall"]),
                       "f1": float(r["f1-score"]), "support": int(r["support"])}
                for name, r in report.items() if not name.endswith(" avg")}
    return {
        "precision": float(precision_score(gold, predicted, zero_division=0)),
        "recall": float(recall_score(gold, predicted, zero_division=0)),
        "f1": float(f1_score(gold, predicted, zero_division=0)),
        "word_accuracy": _word_accuracy(gold, predicted),
        "per_type": per_type,
    }


def _word_accuracy(gold: list[list[str]], predicted: list[list[str]]) -> float:
    pairs = [(g, p) for gs, ps in zip(gold, predicted, strict=True) for g, p in zip(gs, ps, strict=True)]
    return sum(g == p for g, p in pairs) / len(pairs) if pairs else 0.0
