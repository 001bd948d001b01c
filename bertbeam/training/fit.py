"""The optimisation loop that ``bertbeam train`` and ``bertbeam distill`` share: transformers'
``Trainer`` on bertbeam's batches, run to a :class:`~bertbeam.training.plan.TrainPlan`.

``Trainer`` runs the loop (AdamW, linear warm-up and decay, gradient clipping, evaluation
every ``plan.eval_every`` steps, early stopping, the best checkpoint, seeding, bf16 autocast
on CUDA); bertbeam supplies the batches: ``plan.batch_size`` rows, length-sorted within
shuffled pools so they pad little, new each epoch (:class:`_TrainBatches`), and
token-budget batches for evaluation. A distillation passes its own loss (``loss_fn``).
Why Trainer: ``docs/design-notes.md``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bertbeam.config import BatchSpec
from bertbeam.core.planning import plan_batches
from bertbeam.training.plan import TrainPlan
from bertbeam.training.scores import class_scores, entity_scores, multi_label_scores

IGNORE = -100  # the label of tokens the loss skips (special tokens, later sub-tokens)
_POOL = 32  # batches sorted together: little padding, and still a fresh mix every epoch


class _TrainBatches:
    """Batches of ``batch`` rows, new ones each epoch: the rows are shuffled (seed + epoch),
    cut into pools of ``_POOL`` batches, sorted by length within a pool (so a batch pads
    little) and cut; the batches are then shuffled. Every epoch has the same number of
    batches, so a schedule in steps means the same on every run."""

    def __init__(self, lengths: np.ndarray, batch: int, seed: int) -> None:
        self.lengths, self.batch, self.seed, self.epoch = lengths, batch, seed, 0
        pool, n = batch * _POOL, len(lengths)
        self.count = sum(-(-min(pool, n - at) // batch) for at in range(0, n, pool))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1  # a loop that never calls set_epoch still reshuffles
        order = rng.permutation(len(self.lengths))
        pool = self.batch * _POOL
        batches = []
        for at in range(0, len(order), pool):
            rows = order[at:at + pool]
            rows = rows[np.argsort(self.lengths[rows], kind="stable")]
            batches += [rows[i:i + self.batch].tolist() for i in range(0, len(rows), self.batch)]
        return iter([batches[i] for i in rng.permutation(len(batches))])


def _eval_batches(features: list[dict[str, Any]], token_budget: int, pad_multiple: int) -> list[list[int]]:
    """Evaluation batches: length-sorted rows cut by the token budget, as ``bertbeam label``
    cuts them (the order does not matter, only the cost)."""
    spec = BatchSpec()  # the pipeline's cost of one more batch
    lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
    return [rows.tolist() for rows, _ in plan_batches(
        lengths, token_budget, spec.max_batch_size, pad_multiple, spec.batch_overhead_tokens)]


def _make_trainer_class():
    from torch.utils.data import DataLoader  # the model stack loads where it is used (start-up)
    from transformers import Trainer  # the model stack loads where it is used (start-up)

    class _BatchTrainer(Trainer):
        """Trainer whose loaders yield bertbeam's batches, with an optional loss of its own."""

        def __init__(self, *args, batches: dict[str, Any], loss_fn: Callable | None = None,
                     **kwargs):
            super().__init__(*args, **kwargs)
            self._batches, self._loss_fn = batches, loss_fn

        def _loader(self, dataset: Any, key: str) -> Any:
            loader = DataLoader(dataset, batch_sampler=self._batches[key],
                                collate_fn=self.data_collator,
                                pin_memory=self.args.dataloader_pin_memory)
            return self.accelerator.prepare(loader)

        def get_train_dataloader(self) -> Any:
            return self._loader(self.train_dataset, "train")

        def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
            return self._loader(self.eval_dataset, "eval")

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self._loss_fn is None:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            loss, outputs = self._loss_fn(model, inputs)
            return (loss, outputs) if return_outputs else loss

    return _BatchTrainer


def main_metric(task: str, multi_label: bool) -> str:
    """The evaluation metric that picks the best checkpoint."""
    return "f1" if task == "ner" else "micro_f1" if multi_label else "accuracy"


def _metric_fn(task: str, multi_label: bool, names: list[str]):
    """Trainer's ``compute_metrics`` and ``preprocess_logits_for_metrics`` for the task."""
    import torch  # the model stack loads where it is used (start-up)

    def reduce(logits: Any, labels: Any) -> Any:
        return (logits > 0).to(torch.int8) if multi_label else logits.argmax(dim=-1)

    def compute(prediction: Any) -> dict[str, float]:
        preds, gold = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        if task == "ner":
            keep = gold != IGNORE
            g = [[names[t] for t in row[m]] for row, m in zip(gold, keep, strict=True)]
            p = [[names[t] for t in row[m]] for row, m in zip(preds, keep, strict=True)]
            s = entity_scores(g, p)
            return {k: s[k] for k in ("f1", "precision", "recall")}
        if multi_label:
            s = multi_label_scores(_names_on(names, gold > 0.5), _names_on(names, preds > 0))
            return {k: s[k] for k in ("micro_f1", "macro_f1", "accuracy")}
        s = class_scores([names[i] for i in gold], [names[i] for i in preds])
        return {k: s[k] for k in ("accuracy", "macro_f1")}

    return compute, reduce


def _names_on(names: list[str], rows: np.ndarray) -> list[list[str]]:
    """Multi-hot rows -> the names of the labels that are on."""
    return [[n for n, on in zip(names, row, strict=True) if on] for row in rows]


def _evaluation_lines(main: str, plan: TrainPlan, history: list[dict[str, Any]]):
    # the model stack loads where it is used (start-up)
    from transformers import ProgressCallback, TrainerCallback

    class _ProgressBarOnly(ProgressCallback):
        """tqdm bars without Trainer's dict print-outs: _EvaluationLines prints one line instead."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    class _EvaluationLines(TrainerCallback):
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
            print(f"step {row['step']}/{plan.steps} (epoch {row['epoch']:g})  train_loss {loss}  "
                  f"{shown}{'  (best)' if best else ''}  {time.perf_counter() - self.start:.0f} s",
                  file=sys.stderr, flush=True)

    return _ProgressBarOnly, _EvaluationLines()


def resolve_device(device: str, num_threads: int | None) -> tuple[str, bool]:
    """(device type, bf16): CUDA with bf16 autocast where there is a GPU, else CPU float32;
    sets the CPU threads when a number is given."""
    import torch  # the model stack loads where it is used (start-up)

    if num_threads:
        torch.set_num_threads(num_threads)
    cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not cuda:
        raise ValueError("device 'cuda' was requested but this machine sees no CUDA device.")
    return ("cuda", torch.cuda.is_bf16_supported()) if cuda else ("cpu", False)


@dataclass
class Fitted:
    """What :func:`fit` leaves: the trainer (its model is the best one), the metrics of each
    evaluation, the best of them, and the training's seconds and tokens per second."""

    trainer: Any
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    train_seconds: float
    tokens_per_second: float | None


def fit(*, model: Any, tokenizer: Any, train_features: list[dict[str, Any]],
        eval_features: list[dict[str, Any]] | None, plan: TrainPlan, names: list[str],
        task: str, multi_label: bool, seed: int, weight_decay: float, max_grad_norm: float,
        token_budget: int, device: str, bf16: bool, scratch: str,
        collator: Any = None, loss_fn: Callable | None = None) -> Fitted:
    """Trains ``model`` on ``train_features`` for ``plan.steps`` steps, evaluating every
    ``plan.eval_every`` steps and stopping early; the trainer's model is then the best one.
    Checkpoints of the run go under ``scratch``."""
    # the model stack loads where it is used (start-up)
    from transformers import (
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        ProgressCallback,
        TrainingArguments,
    )

    pad_multiple = 8 if device == "cuda" else 1
    lengths = np.array([len(f["input_ids"]) for f in train_features], dtype=np.int64)
    batches: dict[str, Any] = {"train": _TrainBatches(lengths, plan.batch_size, seed)}
    evaluates = bool(eval_features) and plan.eval_every is not None
    if evaluates:
        batches["eval"] = _eval_batches(eval_features, token_budget, pad_multiple)
    if collator is None:
        cls = DataCollatorForTokenClassification if task == "ner" else DataCollatorWithPadding
        collator = cls(tokenizer, pad_to_multiple_of=pad_multiple if pad_multiple > 1 else None)
    compute, reduce = _metric_fn(task, multi_label, names)
    main = f"eval_{main_metric(task, multi_label)}"
    history: list[dict[str, Any]] = []
    bar_cls, lines = _evaluation_lines(main, plan, history)
    every = plan.eval_every or max(1, plan.steps // 8)
    args = TrainingArguments(
        output_dir=os.path.join(scratch, "checkpoints"), max_steps=plan.steps,
        per_device_train_batch_size=plan.batch_size,
        learning_rate=plan.learning_rate, weight_decay=weight_decay,
        warmup_steps=plan.warmup_steps, lr_scheduler_type="linear",
        max_grad_norm=max_grad_norm, seed=seed, data_seed=seed,
        use_cpu=device == "cpu", bf16=bf16,
        eval_strategy="steps" if evaluates else "no", eval_steps=every,
        save_strategy="steps" if evaluates else "no", save_steps=every,
        save_only_model=True, save_total_limit=1,
        load_best_model_at_end=evaluates,
        metric_for_best_model=main if evaluates else None, greater_is_better=True,
        logging_strategy="steps", logging_steps=every, report_to="none", disable_tqdm=False,
        dataloader_pin_memory=device == "cuda", remove_unused_columns=False,
    )
    trainer = _make_trainer_class()(
        model=model, args=args, train_dataset=train_features, eval_dataset=eval_features,
        data_collator=collator, processing_class=tokenizer,
        compute_metrics=compute if evaluates else None,
        preprocess_logits_for_metrics=reduce if evaluates else None,
        callbacks=[lines] + ([EarlyStoppingCallback(plan.patience)] if evaluates else []),
        batches=batches, loss_fn=loss_fn,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(bar_cls)
    result = trainer.train()
    runtime = float(result.metrics.get("train_runtime", 0.0))
    tokens = float(lengths.sum()) * float(trainer.state.epoch or 0)
    best = max(history, key=lambda h: h.get(main, -1)) if history else None
    return Fitted(trainer, history, best, runtime, tokens / runtime if runtime else None)


def save_checkpoint(fitted: Fitted, directory: str) -> None:
    """Writes the trainer's (best) model and its tokenizer to ``directory``, without the
    pickled training arguments that Trainer adds (a checkpoint without pickles is one
    bertbeam loads without a second thought; ``_TRAIN.json`` holds them as JSON)."""
    fitted.trainer.save_model(directory)
    os.remove(os.path.join(directory, "training_args.bin"))
