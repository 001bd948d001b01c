"""``bertbeam evaluate``: scores a ``bertbeam label`` output against gold rows, by id.

classify: the predicted ``label`` (``labels`` with ``multi_label``) against the gold label
column: accuracy, macro and micro F1, per-class precision / recall / F1 / support, and a
confusion-matrix PNG.

ner: the predicted ``entities`` (character spans) against gold ``tokens`` + BIO ``tags``.
The predictions are turned into one tag per gold word (the word takes the type of the
entity that covers its first character: ``B-`` where that entity starts, ``I-`` where it
goes on), then scored with seqeval, as transformers' examples score taggers. The words'
character spans are found in the gold text column when there is one, else in
``" ".join(tokens)``: the text ``bertbeam label`` was given must be that text.

Ids present on one side only are counted, listed (the first few) and left out of the
scores; so are gold rows without a label.
"""

from __future__ import annotations

import json
import posixpath
import re
import sys
from typing import Any

from bertbeam.training.config import EvalConfig
from bertbeam.training.data import Skips, TrainingDataError, read_columns, word_spans

EVAL_REPORT = "_EVAL.json"
CONFUSION_PNG = "confusion_matrix.png"
_SHOWN_IDS = 10
_TAG = re.compile(r"^[BI]-")


def _by_id(table: Any, id_column: str, source: str) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        key = row[id_column]
        if key is None:
            raise TrainingDataError(f"{source} has a row without an id (null {id_column!r}); every "
                                    "row needs one to be compared.")
        key = str(key)
        if key in rows:
            raise TrainingDataError(f"{source} has id {key!r} more than once; ids must be unique.")
        rows[key] = row
    return rows


def entities_to_tags(spans: list[tuple[int, int]], entities: list[dict[str, Any]]) -> list[str]:
    """One BIO tag per word (character ``spans``) from predicted entities (character
    ``start``/``end``): a word takes the entity that covers its first character. An entity
    group that is a tag itself (aggregation ``none``) is used as the word's tag."""
    tags, previous = [], None
    for start, _ in spans:
        hit = next((k for k, e in enumerate(entities) if e["start"] <= start < e["end"]), None)
        if hit is None:
            tags.append("O")
        else:
            group = entities[hit]["entity_group"]
            tags.append(group if _TAG.match(group) else f"{'I' if hit == previous else 'B'}-{group}")
        previous = hit
    return tags


def _classify_pairs(cfg: EvalConfig, gold: dict, predicted: dict, ids: list[str],
                    skips: Skips) -> tuple[list, list]:
    g_out, p_out = [], []
    for key in ids:
        label = gold[key][cfg.label_column]
        if cfg.multi_label:
            label = [label] if isinstance(label, str) else [x for x in label or () if x]
            guess = [x["label"] for x in predicted[key]["labels"] or ()]
        else:
            label = None if label is None or str(label).strip() == "" else str(label)
            guess = predicted[key]["label"]
        if not label:
            skips.add("gold rows without a label", key)
            continue
        g_out.append(label)
        p_out.append(guess if guess is not None else "")
    return g_out, p_out


def _ner_pairs(cfg: EvalConfig, gold: dict, predicted: dict, ids: list[str],
               skips: Skips) -> tuple[list, list]:
    g_out, p_out = [], []
    for key in ids:
        row = gold[key]
        tokens, tags = row[cfg.tokens_column], row[cfg.tags_column]
        if not tokens or not tags or len(tokens) != len(tags):
            skips.add("gold rows without one tag per token", key)
            continue
        text = row.get(cfg.text_column) or " ".join(tokens)
        spans = word_spans(text, tokens)
        if spans is None:
            skips.add(f"gold rows whose tokens are not in {cfg.text_column!r}", key)
            continue
        g_out.append(list(tags))
        p_out.append(entities_to_tags(spans, predicted[key]["entities"] or []))
    return g_out, p_out


def _output_dir(cfg: EvalConfig) -> str:
    if cfg.output:
        return cfg.output
    import fsspec

    fs, path = fsspec.core.url_to_fs(cfg.predictions)
    fixed = re.split(r"[*?\[]", path, maxsplit=1)[0]
    return fs.unstrip_protocol(posixpath.dirname(fixed) or ".")


def _confusion_png(gold: list[str], predicted: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    names = sorted(set(gold) | set(predicted))
    matrix = confusion_matrix(gold, predicted, labels=names)
    size = max(4.0, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    with _open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def _open(url: str, mode: str) -> Any:
    import fsspec

    return fsspec.open(url, mode)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Compares predictions with gold rows by id and writes ``_EVAL.json`` (and, for
    single-label ``classify``, ``confusion_matrix.png``) to the output directory.

    Returns the report: ``compared`` rows, ``missing`` ids on either side, ``skipped`` gold
    rows, and the scores (see :mod:`bertbeam.training.scores`).

    Example::

        report = evaluate(EvalConfig(task="classify", predictions="out/results-*.parquet",
                                     gold="demo/test.parquet"))
        print(report["scores"]["accuracy"])
    """
    import fsspec

    from bertbeam.training.scores import class_scores, entity_scores, multi_label_scores

    if cfg.task == "ner":
        gold_table = read_columns(cfg.gold, [cfg.id_column, cfg.tokens_column, cfg.tags_column],
                                  (cfg.text_column,))
        column = "entities"
    else:
        gold_table = read_columns(cfg.gold, [cfg.id_column, cfg.label_column])
        column = "labels" if cfg.multi_label else "label"
    predicted = _by_id(read_columns(cfg.predictions, ["id", column]), "id",
                       f"Predictions {cfg.predictions!r}")
    gold = _by_id(gold_table, cfg.id_column, f"Gold {cfg.gold!r}")
    both = sorted(gold.keys() & predicted.keys())
    missing = {
        "gold_without_prediction": sorted(gold.keys() - predicted.keys()),
        "prediction_without_gold": sorted(predicted.keys() - gold.keys()),
    }
    skips = Skips()
    pairs = _ner_pairs if cfg.task == "ner" else _classify_pairs
    g, p = pairs(cfg, gold, predicted, both, skips)
    if not g:
        raise TrainingDataError(
            f"No row to compare: {len(gold)} gold ids, {len(predicted)} predicted ids, "
            f"{len(both)} in common{'; ' + skips.describe() if skips.total() else ''}.")
    if cfg.task == "ner":
        scores = entity_scores(g, p)
    else:
        scores = multi_label_scores(g, p) if cfg.multi_label else class_scores(g, p)
    out = _output_dir(cfg)
    fs, root = fsspec.core.url_to_fs(out)
    fs.makedirs(root, exist_ok=True)
    files = [fs.unstrip_protocol(f"{root.rstrip('/')}/{EVAL_REPORT}")]
    if cfg.task == "classify" and not cfg.multi_label:
        files.append(fs.unstrip_protocol(f"{root.rstrip('/')}/{CONFUSION_PNG}"))
        _confusion_png(g, p, files[1])
    report = {
        "task": cfg.task,
        "predictions": cfg.predictions,
        "gold": cfg.gold,
        "compared": len(g),
        "missing": {k: {"count": len(v), "first_ids": v[:_SHOWN_IDS]} for k, v in missing.items()},
        "skipped": skips.as_dict(),
        "scores": scores,
        "files": files,
    }
    with _open(files[0], "w") as f:
        json.dump(report, f, indent=2)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text: counts, headline scores, a per-class table."""
    s = report["scores"]
    m = report["missing"]
    lines = [f"compared {report['compared']} rows; "
             f"{m['gold_without_prediction']['count']} gold ids without a prediction, "
             f"{m['prediction_without_gold']['count']} predictions without gold"
             + "".join(f"; skipped {v['rows']} {k}" for k, v in report["skipped"].items())]
    heads = ("precision", "recall", "f1", "word_accuracy") if report["task"] == "ner" else (
        "accuracy", "macro_f1", "micro_f1")
    lines.append("  ".join(f"{k} {s[k]:.4f}" for k in heads))
    per = s.get("per_type") or s.get("per_class") or {}
    width = max([len(n) for n in per] + [5])
    lines.append(f"{'label':<{width}}  precision  recall      f1  support")
    lines += [f"{n:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}"
              for n, r in per.items()]
    lines.append(f"wrote {', '.join(report['files'])}")
    return "\n".join(lines)


def print_report(report: dict[str, Any]) -> None:
    print(format_report(report), file=sys.stdout)
