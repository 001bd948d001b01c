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
scores; so are gold rows without a label. Predictions whose labels share none with the gold
rows (a model trained on other label names) are an error, not accuracy 0.

With ``reference`` (another model's ``bertbeam label`` results on the same documents, e.g. a
distilled student's teacher), the report adds ``agreement``: the share of the compared rows
where both models predict the same (classify: the same label, or the same set with
``multi_label``; ner: the same tag on each word). Each side's speed comes from the
``_SUMMARY.json`` beside its results: ``docs_per_second`` through ``bertbeam label``'s
pipeline and ``command_docs_per_second`` over the whole command (imports and start-up
included), and the ratios when both ran on the same input.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import sys
from typing import Any

from bertbeam.filesystems import replacing
from bertbeam.training.config import EvalConfig
from bertbeam.training.data import Skips, TrainingDataError, read_columns, word_spans
from bertbeam.training.scores import class_scores, entity_scores, multi_label_scores

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


def _classify_pairs(cfg: EvalConfig, gold: dict, sides: list[dict], ids: list[str],
                    skips: Skips) -> tuple[list, list[list]]:
    """Gold labels and, for each side (the predictions, then the reference), its labels on
    the same rows (``None`` where a side has no row for the id)."""
    g_out: list = []
    s_out: list[list] = [[] for _ in sides]
    for key in ids:
        label = gold[key][cfg.label_column]
        if cfg.multi_label:
            label = [label] if isinstance(label, str) else [x for x in label or () if x]
        else:
            label = None if label is None or str(label).strip() == "" else str(label)
        if not label:
            skips.add("gold rows without a label", key)
            continue
        g_out.append(label)
        for side, out in zip(sides, s_out, strict=True):
            row = side.get(key)
            if row is None:
                out.append(None)
            elif cfg.multi_label:
                out.append([x["label"] for x in row["labels"] or ()])
            else:
                out.append(row["label"] if row["label"] is not None else "")
    return g_out, s_out


def _ner_pairs(cfg: EvalConfig, gold: dict, sides: list[dict], ids: list[str],
               skips: Skips) -> tuple[list, list[list]]:
    """Gold word tags and, for each side, its entities as word tags on the same rows."""
    g_out: list = []
    s_out: list[list] = [[] for _ in sides]
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
        for side, out in zip(sides, s_out, strict=True):
            hit = side.get(key)
            out.append(None if hit is None else entities_to_tags(spans, hit["entities"] or []))
    return g_out, s_out


def _agreement(predicted: list, reference: list, task: str, multi_label: bool) -> dict[str, Any]:
    """The share of rows (of those both sides have) where the two predict the same; ner:
    of words with the same tag."""
    pairs = [(p, r) for p, r in zip(predicted, reference, strict=True) if r is not None]
    if task == "ner":
        words = [(a, b) for p, r in pairs for a, b in zip(p, r, strict=True)]
        same = sum(a == b for a, b in words)
        return {"agreement": same / len(words) if words else None, "rows": len(pairs),
                "words": len(words)}
    same = sum((sorted(p) == sorted(r)) if multi_label else p == r for p, r in pairs)
    return {"agreement": same / len(pairs) if pairs else None, "rows": len(pairs)}


def _results_dir(pattern: str) -> str:
    """The directory of a results glob (its part before the first wildcard)."""
    import fsspec  # on the first file opened (start-up)

    fs, path = fsspec.core.url_to_fs(pattern)
    fixed = re.split(r"[*?\[]", path, maxsplit=1)[0]
    return fs.unstrip_protocol(posixpath.dirname(fixed) or ".")


def _summary(pattern: str) -> dict[str, Any] | None:
    """The ``_SUMMARY.json`` beside a ``bertbeam label`` output, or None."""
    import fsspec  # on the first file opened (start-up)

    url = f"{_results_dir(pattern).rstrip('/')}/_SUMMARY.json"
    try:
        with fsspec.open(url, "r") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _speed(pattern: str) -> dict[str, Any] | None:
    """What the ``_SUMMARY.json`` beside a ``bertbeam label`` output says of its speed, or
    None when there is none."""
    summary = _summary(pattern)
    if summary is None:
        return None
    keys = ("model", "input", "written", "wall_seconds", "docs_per_second", "tokens_per_second",
            "process_seconds", "device", "dtype", "threads")
    speed = {k: summary.get(k) for k in keys}
    # the whole command's rate too: on short documents the start-up (imports, the runner, the
    # model's load) is a large share of a run, and it does not shrink with the model
    process, written = speed.get("process_seconds"), speed.get("written")
    speed["command_docs_per_second"] = (round(written / process, 3)
                                        if process and written is not None else None)
    return speed


def _speeds(cfg: EvalConfig) -> dict[str, Any]:
    """Each model's docs/s through ``bertbeam label`` and, when both ran on the same input,
    how many times faster the predictions' model is."""
    speeds: dict[str, Any] = {"predictions": _speed(cfg.predictions)}
    if cfg.reference is not None:
        speeds["reference"] = ref = _speed(cfg.reference)
        mine = speeds["predictions"]
        if mine and ref and mine.get("docs_per_second") and ref.get("docs_per_second"):
            speeds["same_input"] = mine.get("input") == ref.get("input")
            speeds["speedup"] = mine["docs_per_second"] / ref["docs_per_second"]
            if mine.get("command_docs_per_second") and ref.get("command_docs_per_second"):
                speeds["command_speedup"] = (mine["command_docs_per_second"]
                                             / ref["command_docs_per_second"])
    return speeds


def _output_dir(cfg: EvalConfig) -> str:
    return cfg.output or _results_dir(cfg.predictions)


def _confusion_png(gold: list[str], predicted: list[str], path: str) -> None:
    import matplotlib  # the report's plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # the report's plots only
    from sklearn.metrics import confusion_matrix  # optional: bertbeam[train]

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
    with replacing(path, "wb") as f:  # never through a link planted in the output (issue 27)
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def _model_labels(pattern: str) -> set[str] | None:
    """The label names of the classifier that wrote the predictions (its ``id2label``), when
    the ``_SUMMARY.json`` beside them names a classify run of a local checkpoint; else None
    (zero-shot's labels are the run's own, and a remote model is not fetched for this)."""
    summary = _summary(pattern)
    model = (summary or {}).get("model")
    if not summary or summary.get("task") != "classify" or not isinstance(model, str):
        return None
    config = os.path.join(model, "config.json")
    try:
        with open(config, encoding="utf-8") as f:
            names = json.load(f).get("id2label") or {}
    except (OSError, ValueError):
        return None
    return {str(v) for v in names.values()} or None


def _check_label_overlap(cfg: EvalConfig, gold: list, predicted: list) -> list[str]:
    """Fails when the model's labels (its ``id2label``, where the run's summary names a
    local checkpoint) share none with the gold labels: it was trained on other label names
    (``LABEL_0`` against ``cat``), and every score would be 0 for that reason. Without the
    model's labels, predictions that share none with gold give a warning (returned)."""
    def names(values: list) -> set[str]:
        return {x for v in values for x in (v if cfg.multi_label else [v]) if x}

    def shown(values: set[str]) -> str:
        listed = sorted(values)
        return ", ".join(listed[:6]) + (", …" if len(listed) > 6 else "")

    g, p = names(gold), names(predicted)
    known = _model_labels(cfg.predictions)
    if known is not None and not known & g:
        raise TrainingDataError(
            f"None of the model's labels ({shown(known)}) occurs in the gold labels ({shown(g)}): "
            "it was trained on other label names, so every score would be 0. Label with a "
            "model trained on these labels, or map the names first.")
    if known is None and p and not g & p:
        return [f"none of the predicted labels ({shown(p)}) occurs in the gold labels "
                f"({shown(g)}): if the model was trained on other label names, map them first"]
    return []


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
    import fsspec  # on the first file opened (start-up)

    if cfg.task == "ner":
        gold_table = read_columns(cfg.gold, [cfg.id_column, cfg.tokens_column, cfg.tags_column],
                                  (cfg.text_column,))
        column = "entities"
    else:
        gold_table = read_columns(cfg.gold, [cfg.id_column, cfg.label_column])
        column = "labels" if cfg.multi_label else "label"
    predicted = _by_id(read_columns(cfg.predictions, ["id", column]), "id",
                       f"Predictions {cfg.predictions!r}")
    sides = [predicted]
    if cfg.reference is not None:
        sides.append(_by_id(read_columns(cfg.reference, ["id", column]), "id",
                            f"Reference {cfg.reference!r}"))
    gold = _by_id(gold_table, cfg.id_column, f"Gold {cfg.gold!r}")
    both = sorted(gold.keys() & predicted.keys())
    missing = {
        "gold_without_prediction": sorted(gold.keys() - predicted.keys()),
        "prediction_without_gold": sorted(predicted.keys() - gold.keys()),
    }
    skips = Skips()
    pairs = _ner_pairs if cfg.task == "ner" else _classify_pairs
    g, (p, *reference) = pairs(cfg, gold, sides, both, skips)
    if not g:
        raise TrainingDataError(
            f"No row to compare: {len(gold)} gold ids, {len(predicted)} predicted ids, "
            f"{len(both)} in common{'; ' + skips.describe() if skips.total() else ''}.")
    warnings: list[str] = []
    if cfg.task == "ner":
        scores = entity_scores(g, p)
    else:
        warnings = _check_label_overlap(cfg, g, p)
        for line in warnings:
            print(f"bertbeam evaluate: warning: {line}", file=sys.stderr)
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
        "speed": _speeds(cfg),
        "warnings": warnings,
        "files": files,
    }
    if reference:
        report["reference"] = {"predictions": cfg.reference,
                               **_agreement(p, reference[0], cfg.task, cfg.multi_label)}
        kept = [(a, b) for a, b in zip(g, reference[0], strict=True) if b is not None]
        if kept:  # the reference's own scores against gold, on the rows it has
            ga, ra = (list(x) for x in zip(*kept, strict=True))
            if cfg.task == "ner":
                report["reference"]["scores"] = {"f1": entity_scores(ga, ra)["f1"]}
            else:
                ref = (multi_label_scores if cfg.multi_label else class_scores)(ga, ra)
                report["reference"]["scores"] = {k: ref[k] for k in ("accuracy", "macro_f1")}
    with replacing(files[0], "w", encoding="utf-8") as f:
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
    lines += _comparison_lines(report)
    lines.append(f"wrote {', '.join(report['files'])}")
    return "\n".join(lines)


def _comparison_lines(report: dict[str, Any]) -> list[str]:
    """Agreement with the reference, and both models' speed side by side."""
    lines = []
    ref, speed = report.get("reference"), report.get("speed") or {}
    if ref:
        unit = "words" if report["task"] == "ner" else "rows"
        agreement = "n/a" if ref["agreement"] is None else f"{ref['agreement']:.4f}"
        own = "  ".join(f"{k} {v:.4f}" for k, v in (ref.get("scores") or {}).items())
        lines.append(f"agreement with the reference {agreement} (on {ref.get(unit, ref['rows'])} "
                     f"{unit}); the reference's own: {own or 'n/a'}")
    for side in ("predictions", "reference"):
        if speed.get(side):
            v = speed[side]
            command = v.get("command_docs_per_second")
            lines.append(f"speed ({side}): {v['docs_per_second'] or 0:.1f} docs/s through "
                         "bertbeam label's pipeline"
                         + (f", {command:.1f} for the whole command" if command else "")
                         + f" ({v['model']}, {v['written']} docs)")
    if "speedup" in speed:
        whole = speed.get("command_speedup")
        lines.append(f"the predictions' model is {speed['speedup']:.2f}x the reference's speed"
                     + (f" ({whole:.2f}x for the whole command)" if whole else "")
                     + ("" if speed["same_input"] else " (on different inputs: not comparable)"))
    return lines


def print_report(report: dict[str, Any]) -> None:
    print(format_report(report), file=sys.stdout)
