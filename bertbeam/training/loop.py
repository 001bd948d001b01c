"""``bertbeam train``: labelled Parquet rows -> a checkpoint that ``bertbeam label`` and the
transformers pipelines load unchanged.

The rows are read and checked (:mod:`~bertbeam.training.data`), the evaluation rows held out
when none are given, the schedule planned from the data and the model
(:mod:`~bertbeam.training.plan`, printed before training), the model trained
(:mod:`~bertbeam.training.fit`) and the best checkpoint published
(:mod:`~bertbeam.training.output`).
"""

from __future__ import annotations

import logging
import sys
import time
from bisect import bisect_right
from dataclasses import asdict
from typing import Any

from bertbeam.config import ModelSpec, TokenizeSpec
from bertbeam.core.engine import resolve_max_length
from bertbeam.core.memory import collector_paused
from bertbeam.core.models import check_weights, load_tokenizer, resolve_model_dir
from bertbeam.training.config import TrainConfig
from bertbeam.training.data import (
    Examples,
    Skips,
    TrainingDataError,
    check_classes,
    check_eval_labels,
    classify_examples,
    label_names,
    ner_examples,
    read_columns,
    split,
)
from bertbeam.training.fit import IGNORE, fit, main_metric, resolve_device, save_checkpoint
from bertbeam.training.output import TRAIN_REPORT, CheckpointOutput
from bertbeam.training.plan import TrainPlan, plan_for

__all__ = ["IGNORE", "TRAIN_REPORT", "encode", "first_subtoken_labels", "load_examples", "train"]

_LOG = logging.getLogger(__name__)


def load_examples(cfg: TrainConfig, pattern: str, skips: Skips) -> Examples:
    """The usable rows of ``pattern`` for ``cfg.task``; unusable ones are counted in ``skips``."""
    if cfg.task == "ner":
        table = read_columns(pattern, [cfg.tokens_column, cfg.tags_column],
                             (cfg.id_column, cfg.text_column))
        return ner_examples(table, tokens_column=cfg.tokens_column, tags_column=cfg.tags_column,
                            text_column=cfg.text_column, id_column=cfg.id_column, skips=skips)
    table = read_columns(pattern, [cfg.text_column, cfg.label_column], (cfg.id_column,))
    return classify_examples(table, text_column=cfg.text_column, label_column=cfg.label_column,
                             id_column=cfg.id_column, multi_label=cfg.multi_label, skips=skips)


def first_subtoken_labels(offsets: list[tuple[int, int]], special: list[int],
                          spans: list[tuple[int, int]], tags: list[int]) -> list[int]:
    """Token labels: each word's tag on the first token that overlaps it, ``IGNORE`` on
    later tokens of the word and on special tokens, as transformers' token-classification
    examples align words and sub-tokens. An empty non-special token (a byte-level "Ġ"
    before a word) belongs to the word that starts where it points."""
    starts = [s for s, _ in spans]
    labels, last_word = [], -1
    for (start, end), is_special in zip(offsets, special, strict=True):
        end = max(end, start + 1)
        word = -1 if is_special else bisect_right(starts, end - 1) - 1
        if word < 0 or word == last_word or spans[word][1] <= start:
            labels.append(IGNORE)
            continue
        labels.append(tags[word])
        last_word = word
    return labels


def encode(examples: Examples, tokenizer: Any, names: list[str], cfg: TrainConfig,
           max_length: int) -> list[dict[str, Any]]:
    """Model features per row: ``input_ids`` and ``labels`` (a class id, a multi-hot float
    vector, or one label per token)."""
    index = {name: i for i, name in enumerate(names)}
    ner = cfg.task == "ner"
    enc = tokenizer(examples.texts, truncation=True, max_length=max_length,
                    return_offsets_mapping=ner, return_special_tokens_mask=ner)
    features = []
    for i, ids in enumerate(enc["input_ids"]):
        label = examples.labels[i]
        if cfg.task == "ner":
            target: Any = first_subtoken_labels(
                enc["offset_mapping"][i], enc["special_tokens_mask"][i], examples.spans[i],
                [index[t] for t in label])
        elif cfg.multi_label:
            target = [float(name in label) for name in names]
        else:
            target = index[label]
        features.append({"input_ids": ids, "labels": target})
    return features


def _prepare(cfg: TrainConfig) -> tuple[Examples, Examples | None, list[str], Skips, str]:
    """(training rows, evaluation rows, label names, skipped rows, where the evaluation rows
    come from and why)."""
    skips = Skips()
    train_rows = load_examples(cfg, cfg.train, skips)
    if not len(train_rows):
        raise TrainingDataError(
            f"No usable training rows in {cfg.train!r}: {skips.describe() or 'it is empty'}.")
    check_classes(label_names(train_rows, cfg.task, multi_label=cfg.multi_label), cfg.task,
                  f"The training data {cfg.train!r}")
    eval_rows, source = None, "no evaluation (--eval-fraction 0): the last step's model is kept"
    if cfg.eval is not None:
        eval_rows = load_examples(cfg, cfg.eval, skips)
        source = f"{len(eval_rows):,} evaluation rows from --eval"
    elif cfg.eval_fraction > 0:
        total = len(train_rows)
        fraction = min(cfg.eval_fraction, cfg.max_eval_rows / total)
        stratify = cfg.task == "classify" and not cfg.multi_label
        train_rows, eval_rows = split(train_rows, fraction, cfg.seed, stratify=stratify)
        capped = f", at most {cfg.max_eval_rows:,}" if fraction < cfg.eval_fraction else ""
        source = (f"{len(eval_rows):,} of {total:,} held out ({cfg.eval_fraction:.0%}{capped}"
                  f"{', stratified by label' if stratify else ''}) because no --eval was given: "
                  "they pick the best checkpoint and stop training early")
        if not len(eval_rows):
            raise TrainingDataError(
                f"Holding out {cfg.eval_fraction:.0%} of {total} usable training row(s) leaves no "
                "evaluation row (every label keeps at least one training row). Give evaluation "
                "rows (--eval GLOB), a larger --eval-fraction, or --eval-fraction 0 to train "
                "without evaluation.")
    names = label_names(train_rows, cfg.task, multi_label=cfg.multi_label)
    check_classes(names, cfg.task, f"The training rows left after the split of {cfg.train!r}")
    if eval_rows is not None:
        if not len(eval_rows):
            raise TrainingDataError(
                f"No usable evaluation rows in {cfg.eval!r}: {skips.describe() or 'it is empty'}.")
        check_eval_labels(names, eval_rows, cfg.task, cfg.multi_label)
    return train_rows, eval_rows, names, skips, source


def _load(cfg: TrainConfig, names: list[str]) -> tuple[Any, Any, int]:
    import transformers  # the model stack loads where it is used (start-up)

    # the model stack loads where it is used (start-up)
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    quiet_transformers()
    spec = ModelSpec(uri=cfg.model, cache_dir=cfg.cache_dir,
                     allow_pickle_weights=cfg.allow_pickle_weights)
    local_dir = resolve_model_dir(cfg.model, cfg.cache_dir)
    # The same rule as embed and label: pickle-only weights can run code when loaded.
    check_weights(local_dir, cfg.model, allow_pickle_weights=cfg.allow_pickle_weights)
    tokenizer = load_tokenizer(local_dir, spec)
    cls = AutoModelForTokenClassification if cfg.task == "ner" else AutoModelForSequenceClassification
    transformers.set_seed(cfg.seed)  # the new head's initial weights
    extra = {"problem_type": "multi_label_classification"} if cfg.multi_label else {}
    model = cls.from_pretrained(local_dir, num_labels=len(names), ignore_mismatched_sizes=True,
                                id2label=dict(enumerate(names)),
                                label2id={n: i for i, n in enumerate(names)},
                                use_safetensors=None if cfg.allow_pickle_weights else True, **extra)
    max_length = resolve_max_length(tokenizer, model.config, local_dir,
                                    TokenizeSpec(max_length=cfg.max_length))
    return tokenizer, model, max_length


def quiet_transformers() -> None:
    """No "newly initialized head" warning (a new head is the point) and no loading bars."""
    import transformers  # the model stack loads where it is used (start-up)

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Fine-tunes ``cfg.model`` on ``cfg.train`` and writes the best checkpoint to ``cfg.output``.

    Parquet rows -> a safetensors checkpoint with ``id2label``/``label2id`` and the
    tokenizer, plus ``_TRAIN.json`` (the report returned here: the plan, sizes, skipped
    rows, metrics per evaluation, the best one, seconds, tokens per second).

    Example::

        report = train(TrainConfig(task="classify", train="demo/train.parquet", output="m"))
        print(report["best"])
    """
    import torch  # the model stack loads where it is used (start-up)

    threads = torch.get_num_threads()
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)  # cfg.num_threads is for this run only


def _train(cfg: TrainConfig) -> dict[str, Any]:
    started = time.perf_counter()
    output = CheckpointOutput(cfg.output)
    output.check()
    train_rows, eval_rows, names, skips, source = _prepare(cfg)
    if skips.total():
        print(f"bertbeam train: skipped {skips.total()} rows: {skips.describe()}", file=sys.stderr)
    device, bf16 = resolve_device(cfg.device, cfg.num_threads)
    with collector_paused():  # the model classes' imports and the weights (bertbeam/core/memory.py)
        tokenizer, model, max_length = _load(cfg, names)
    train_features = encode(train_rows, tokenizer, names, cfg, max_length)
    truncated = sum(n > max_length for n in map(len, tokenizer(train_rows.texts)["input_ids"]))
    eval_features = encode(eval_rows, tokenizer, names, cfg, max_length) if eval_rows else None
    plan = plan_for(cfg, train_rows=len(train_features), eval_rows=len(eval_features or ()),
                    eval_source=source, max_length=max_length,
                    hidden_size=getattr(model.config, "hidden_size", None))
    for line in plan.describe().splitlines():
        print(f"bertbeam train: {line}", file=sys.stderr, flush=True)
    with output:
        fitted = fit(model=model, tokenizer=tokenizer, train_features=train_features,
                     eval_features=eval_features, plan=plan, names=names, task=cfg.task,
                     multi_label=cfg.multi_label, seed=cfg.seed, weight_decay=cfg.weight_decay,
                     max_grad_norm=cfg.max_grad_norm, token_budget=cfg.token_budget,
                     device=device, bf16=bf16, scratch=output.staging)
        save_checkpoint(fitted, output.model_dir)
        report = _report(cfg, plan, fitted, names, skips, device, bf16,
                         time.perf_counter() - started)
        report["truncated_train_rows"] = {"rows": truncated, "max_length": max_length}
        output.publish(report)
    best, metric = report["best"], main_metric(cfg.task, cfg.multi_label)
    print(f"bertbeam train: wrote {cfg.output} ({len(names)} labels, "
          + (f"best at step {best['step']}: {metric} {best[f'eval_{metric}']:.4f}"
             if best else "the last step, no evaluation")
          + f", {report['train_seconds']:.0f} s training)", file=sys.stderr)
    return report


def _report(cfg: TrainConfig, plan: TrainPlan, fitted: Any, names: list[str], skips: Skips,
            device: str, bf16: bool, seconds: float) -> dict[str, Any]:
    state = fitted.trainer.state
    return {
        "config": asdict(cfg),
        "plan": plan.as_dict(),
        "labels": names,
        "train_rows": plan.train_rows,
        "eval_rows": plan.eval_rows,
        "skipped": skips.as_dict(),
        "steps": state.global_step,
        "epochs_run": float(state.epoch or 0),
        "history": fitted.history,
        "best": fitted.best,
        "train_seconds": fitted.train_seconds,
        "train_tokens_per_second": fitted.tokens_per_second,
        "total_seconds": seconds,
        "device": device,
        "dtype": "bfloat16 autocast" if bf16 else "float32",
    }
