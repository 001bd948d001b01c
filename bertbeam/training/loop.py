"""Fine-tuning with transformers' ``Trainer`` on bertbeam's length-sorted token-budget batches.

``Trainer`` runs the loop (AdamW, linear warm-up and decay, gradient clipping, evaluation
each epoch, early stopping, the best checkpoint, seeding, bf16 autocast on CUDA); bertbeam
supplies the batches: rows cut by ``planning.plan_batches`` into batches of at most ``token_budget``
padded tokens, once, then shuffled as whole batches each epoch (as fairseq does), so an
epoch always has the same number of steps. Why Trainer: ``docs/design-notes.md``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from bisect import bisect_right
from dataclasses import asdict
from typing import Any

import numpy as np

from bertbeam.core.memory import collector_paused
from bertbeam.training.config import TrainConfig
from bertbeam.training.data import (
    Examples,
    Skips,
    check_classes,
    check_eval_labels,
    classify_examples,
    label_names,
    ner_examples,
    read_columns,
    split,
)

_LOG = logging.getLogger(__name__)
IGNORE = -100  # the label of tokens the loss skips (special tokens, later sub-tokens)
TRAIN_REPORT = "_TRAIN.json"


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


def _batch_sampler(features: list[dict[str, Any]], cfg: TrainConfig, pad_multiple: int,
                   *, shuffle: bool) -> Any:
    import torch

    from bertbeam.config import BatchSpec
    from bertbeam.core.planning import plan_batches

    spec = BatchSpec()  # the pipeline's cost of one more batch
    lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
    batches = [rows.tolist() for rows, _ in plan_batches(
        lengths, cfg.token_budget, cfg.max_batch_size, pad_multiple, spec.batch_overhead_tokens)]

    class _TokenBudgetBatches(torch.utils.data.Sampler):
        """The same batches every epoch, in an order shuffled per epoch (seed + epoch)."""

        def __init__(self) -> None:
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return len(batches)

        def __iter__(self):
            order = list(range(len(batches)))
            if shuffle:
                np.random.default_rng(cfg.seed + self.epoch).shuffle(order)
                self.epoch += 1  # a loop that never calls set_epoch still reshuffles
            return iter([batches[i] for i in order])

    return _TokenBudgetBatches()


def _make_trainer_class():
    from torch.utils.data import DataLoader
    from transformers import Trainer

    class _TokenBudgetTrainer(Trainer):
        """Trainer whose train and eval loaders yield token-budget batches."""

        def __init__(self, *args, batch_samplers: dict[str, Any], **kwargs):
            super().__init__(*args, **kwargs)
            self._batch_samplers = batch_samplers

        def _budget_loader(self, dataset: Any, key: str) -> Any:
            loader = DataLoader(dataset, batch_sampler=self._batch_samplers[key],
                                collate_fn=self.data_collator,
                                pin_memory=self.args.dataloader_pin_memory)
            return self.accelerator.prepare(loader)

        def get_train_dataloader(self) -> Any:
            return self._budget_loader(self.train_dataset, "train")

        def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
            return self._budget_loader(self.eval_dataset, "eval")

    return _TokenBudgetTrainer


def _metric_fn(cfg: TrainConfig, names: list[str]):
    """Trainer's ``compute_metrics`` and ``preprocess_logits_for_metrics`` for the task."""
    import torch

    from bertbeam.training.scores import class_scores, entity_scores, multi_label_scores

    def reduce(logits: Any, labels: Any) -> Any:
        return (logits > 0).to(torch.int8) if cfg.multi_label else logits.argmax(dim=-1)

    def compute(prediction: Any) -> dict[str, float]:
        preds, gold = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        if cfg.task == "ner":
            keep = gold != IGNORE
            g = [[names[t] for t in row[m]] for row, m in zip(gold, keep, strict=True)]
            p = [[names[t] for t in row[m]] for row, m in zip(preds, keep, strict=True)]
            s = entity_scores(g, p)
            return {k: s[k] for k in ("f1", "precision", "recall")}
        if cfg.multi_label:
            s = multi_label_scores(_names_on(names, gold > 0.5), _names_on(names, preds > 0))
            return {k: s[k] for k in ("micro_f1", "macro_f1", "accuracy")}
        s = class_scores([names[i] for i in gold], [names[i] for i in preds])
        return {k: s[k] for k in ("accuracy", "macro_f1")}

    return compute, reduce


def _names_on(names: list[str], rows: np.ndarray) -> list[list[str]]:
    """Multi-hot rows -> the names of the labels that are on."""
    return [[n for n, on in zip(names, row, strict=True) if on] for row in rows]


def _main_metric(cfg: TrainConfig) -> str:
    return "f1" if cfg.task == "ner" else "micro_f1" if cfg.multi_label else "accuracy"


def _epoch_callbacks(cfg: TrainConfig, history: list[dict[str, Any]]):
    from transformers import ProgressCallback, TrainerCallback

    main = f"eval_{_main_metric(cfg)}"

    class _ProgressBarOnly(ProgressCallback):
        """tqdm bars without Trainer's dict print-outs: _EpochLines prints one line instead."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    class _EpochLines(TrainerCallback):
        """One line of metrics per evaluation, and the history for _TRAIN.json."""

        def __init__(self) -> None:
            self.loss: float | None = None
            self.start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics = metrics or {}
            best = not history or metrics.get(main, -1) > max(h.get(main, -1) for h in history)
            row = {"epoch": round(float(state.epoch or 0), 2), "step": state.global_step,
                   "train_loss": self.loss, **{k: float(v) for k, v in metrics.items()
                                               if k.startswith("eval_") and "runtime" not in k
                                               and "per_second" not in k}}
            history.append(row)
            shown = "  ".join(f"{k if k == 'eval_loss' else k.removeprefix('eval_')} {v:.4f}"
                              for k, v in row.items() if k.startswith("eval_"))
            loss = f"{self.loss:.4f}" if self.loss is not None else "-"
            print(f"epoch {row['epoch']:g}/{state.num_train_epochs}  step {row['step']}  train_loss {loss}  "
                  f"{shown}{'  (best)' if best else ''}  {time.perf_counter() - self.start:.0f} s",
                  file=sys.stderr, flush=True)

    return _ProgressBarOnly, _EpochLines()


def _device(cfg: TrainConfig) -> tuple[str, bool]:
    """(device type, bf16): CUDA with bf16 autocast where there is a GPU, else CPU float32;
    sets the CPU threads when the config names a number."""
    import torch

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not cuda:
        raise ValueError("device 'cuda' was requested but this machine sees no CUDA device.")
    return ("cuda", torch.cuda.is_bf16_supported()) if cuda else ("cpu", False)


def _prepare(cfg: TrainConfig) -> tuple[Examples, Examples | None, list[str], Skips]:
    skips = Skips()
    train_rows = load_examples(cfg, cfg.train, skips)
    if not len(train_rows):
        raise ValueError(f"No usable training rows in {cfg.train!r}: {skips.describe() or 'it is empty'}.")
    eval_rows = None
    if cfg.eval is not None:
        eval_rows = load_examples(cfg, cfg.eval, skips)
    elif cfg.eval_fraction > 0:
        stratify = cfg.task == "classify" and not cfg.multi_label
        train_rows, eval_rows = split(train_rows, cfg.eval_fraction, cfg.seed, stratify=stratify)
    names = label_names(train_rows, cfg.task, multi_label=cfg.multi_label)
    check_classes(names, cfg.task, f"The training data {cfg.train!r}")
    if eval_rows is not None:
        if not len(eval_rows):
            raise ValueError(f"No usable evaluation rows: {skips.describe() or 'the split is empty'}.")
        check_eval_labels(names, eval_rows, cfg.task, cfg.multi_label)
    return train_rows, eval_rows, names, skips


def _load(cfg: TrainConfig, names: list[str]) -> tuple[Any, Any, int]:
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from bertbeam.config import ModelSpec, TokenizeSpec
    from bertbeam.core.engine import resolve_max_length
    from bertbeam.core.models import load_tokenizer, resolve_model_dir

    transformers.utils.logging.set_verbosity_error()  # "newly initialized head" is the point
    transformers.utils.logging.disable_progress_bar()  # weight loading and saving bars
    spec = ModelSpec(uri=cfg.model, cache_dir=cfg.cache_dir)
    local_dir = resolve_model_dir(cfg.model, cfg.cache_dir)
    tokenizer = load_tokenizer(local_dir, spec)
    cls = AutoModelForTokenClassification if cfg.task == "ner" else AutoModelForSequenceClassification
    transformers.set_seed(cfg.seed)  # the new head's initial weights
    extra = {"problem_type": "multi_label_classification"} if cfg.multi_label else {}
    model = cls.from_pretrained(local_dir, num_labels=len(names), ignore_mismatched_sizes=True,
                                id2label=dict(enumerate(names)),
                                label2id={n: i for i, n in enumerate(names)}, **extra)
    max_length = resolve_max_length(tokenizer, model.config, local_dir,
                                    TokenizeSpec(max_length=cfg.max_length))
    return tokenizer, model, max_length


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Fine-tunes ``cfg.model`` on ``cfg.train`` and writes the best checkpoint to ``cfg.output``.

    Parquet rows -> a safetensors checkpoint with ``id2label``/``label2id`` and the
    tokenizer, plus ``_TRAIN.json`` (the report returned here: sizes, skipped rows, metrics
    per epoch, the best epoch, seconds, tokens per second).

    Example::

        report = train(TrainConfig(task="classify", train="demo/train.parquet", output="m"))
        print(report["best"])
    """
    import torch

    threads = torch.get_num_threads()
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)  # cfg.num_threads is for this run only


def _train(cfg: TrainConfig) -> dict[str, Any]:
    from transformers import (
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        ProgressCallback,
        TrainingArguments,
    )

    started = time.perf_counter()
    train_rows, eval_rows, names, skips = _prepare(cfg)
    if skips.total():
        print(f"bertbeam train: skipped {skips.total()} rows: {skips.describe()}", file=sys.stderr)
    device, bf16 = _device(cfg)
    with collector_paused():  # the model classes' imports and the weights (bertbeam/core/memory.py)
        tokenizer, model, max_length = _load(cfg, names)
    train_features = encode(train_rows, tokenizer, names, cfg, max_length)
    lengths = map(len, tokenizer(train_rows.texts)["input_ids"])
    truncated = sum(n > max_length for n in lengths)
    eval_features = encode(eval_rows, tokenizer, names, cfg, max_length) if eval_rows else None
    pad_multiple = 8 if device == "cuda" else 1
    samplers = {"train": _batch_sampler(train_features, cfg, pad_multiple, shuffle=True)}
    if eval_features:
        samplers["eval"] = _batch_sampler(eval_features, cfg, pad_multiple, shuffle=False)
    collator_cls = DataCollatorForTokenClassification if cfg.task == "ner" else DataCollatorWithPadding
    collator = collator_cls(tokenizer, pad_to_multiple_of=pad_multiple if pad_multiple > 1 else None)
    compute, reduce = _metric_fn(cfg, names)
    history: list[dict[str, Any]] = []
    bar_cls, lines = _epoch_callbacks(cfg, history)
    evaluates = eval_features is not None
    with tempfile.TemporaryDirectory(prefix="bertbeam-train-") as scratch:
        args = TrainingArguments(
            output_dir=os.path.join(scratch, "checkpoints"),
            num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
            learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_fraction, lr_scheduler_type="linear",
            max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, data_seed=cfg.seed,
            use_cpu=device == "cpu", bf16=bf16,
            eval_strategy="epoch" if evaluates else "no",
            save_strategy="epoch" if evaluates else "no", save_only_model=True, save_total_limit=1,
            load_best_model_at_end=evaluates,
            metric_for_best_model=_main_metric(cfg) if evaluates else None, greater_is_better=True,
            logging_strategy="epoch", report_to="none", disable_tqdm=False,
            dataloader_pin_memory=device == "cuda",
        )
        trainer = _make_trainer_class()(
            model=model, args=args, train_dataset=train_features, eval_dataset=eval_features,
            data_collator=collator, processing_class=tokenizer,
            compute_metrics=compute if evaluates else None,
            preprocess_logits_for_metrics=reduce if evaluates else None,
            callbacks=[lines] + ([EarlyStoppingCallback(cfg.patience)] if evaluates else []),
            batch_samplers=samplers,
        )
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(bar_cls)
        result = trainer.train()
        report = _report(cfg, trainer, result, history, names, skips, train_features,
                         len(eval_features or ()), device, bf16, time.perf_counter() - started)
        report["truncated_train_rows"] = {"rows": truncated, "max_length": max_length}
        local = _local_path(cfg.output) or os.path.join(scratch, "model")
        trainer.save_model(local)  # the best checkpoint, with the tokenizer
        # Trainer pickles its arguments beside the weights; _TRAIN.json holds them as JSON,
        # and a checkpoint without pickles is one bertbeam loads without a second thought.
        os.remove(os.path.join(local, "training_args.bin"))
        with open(os.path.join(local, TRAIN_REPORT), "w") as f:
            json.dump(report, f, indent=2)
        if _local_path(cfg.output) is None:
            _upload(local, cfg.output)
    best = report["best"]
    print(f"bertbeam train: wrote {cfg.output} ({len(names)} labels, best "
          + (f"epoch {best['epoch']:g}: {_main_metric(cfg)} {best[f'eval_{_main_metric(cfg)}']:.4f}"
             if best else "= last epoch, no evaluation")
          + f", {report['train_seconds']:.0f} s training)", file=sys.stderr)
    return report


def _report(cfg: TrainConfig, trainer: Any, result: Any, history: list[dict[str, Any]],
            names: list[str], skips: Skips, features: list[dict[str, Any]], n_eval: int,
            device: str, bf16: bool, seconds: float) -> dict[str, Any]:
    main = f"eval_{_main_metric(cfg)}"
    best = max(history, key=lambda h: h.get(main, -1)) if history else None
    runtime = float(result.metrics.get("train_runtime", 0.0))
    tokens = sum(len(f["input_ids"]) for f in features) * float(trainer.state.epoch or 0)
    return {
        "config": asdict(cfg),
        "labels": names,
        "train_rows": len(features),
        "eval_rows": n_eval,
        "skipped": skips.as_dict(),
        "steps": trainer.state.global_step,
        "epochs_run": float(trainer.state.epoch or 0),
        "history": history,
        "best": best,
        "train_seconds": runtime,
        "train_tokens_per_second": tokens / runtime if runtime else None,
        "total_seconds": seconds,
        "device": device,
        "dtype": "bfloat16 autocast" if bf16 else "float32",
    }


def _local_path(url: str) -> str | None:
    """The local path of ``url`` (a path or ``file://``), or None for a remote URL."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return path if "file" in protocols else None


def _upload(local: str, url: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    for name in sorted(os.listdir(local)):
        fs.put_file(os.path.join(local, name), f"{root}/{name}")
