"""``bertbeam train``, ``bertbeam distill`` and ``bertbeam evaluate``: argv -> config -> run,
one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from bertbeam.config import EMBEDDED_MODEL
from bertbeam.core.models import ModelLoadError
from bertbeam.run import stopping
from bertbeam.training.config import (
    AUGMENT_MOST,
    AUGMENT_TO_ROWS,
    DistillConfig,
    EvalConfig,
    TrainConfig,
)
from bertbeam.training.data import TrainingDataError
from bertbeam.training.distill import distill
from bertbeam.training.evaluate import evaluate, print_report
from bertbeam.training.loop import train
from bertbeam.training.plan import DEFAULT_EPOCHS, MAX_EPOCHS, MAX_STEPS, MIN_STEPS


def _schedule_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(DistillConfig)}


def _train_parser() -> argparse.ArgumentParser:
    d = _schedule_defaults()
    p = argparse.ArgumentParser(
        prog="bertbeam train", allow_abbrev=False, formatter_class=_DefaultsHelpFormatter,
        description="Fine-tune a sequence classifier (classify) or a token tagger (ner) from "
                    "Parquet; the checkpoint works with `bertbeam label --model DIR`. The "
                    "schedule is planned from the data and the model and printed before "
                    "training starts.")
    p.add_argument("--task", required=True, choices=["classify", "ner"],
                   help="classify: a label per row; ner: a BIO tag per word")
    p.add_argument("--train", required=True, help="Parquet glob of training rows")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--eval", default=None, help="Parquet glob of evaluation rows")
    split.add_argument("--eval-fraction", type=float, default=d["eval_fraction"],
                       help="share of --train held out for evaluation when there is no --eval "
                            "(0: no evaluation, the last step is kept)")
    p.add_argument("--output", required=True,
                   help="checkpoint directory (local or gs://...): new, empty, or an earlier "
                        "bertbeam train output, which is replaced")
    p.add_argument("--model", default=EMBEDDED_MODEL, help="start checkpoint")
    p.add_argument("--id-column", default="id", help="row ids (messages name skipped rows by id)")
    p.add_argument("--text-column", default="text", help="the text the model reads")
    p.add_argument("--label-column", default="label", help="classify: a label, or a list of labels")
    p.add_argument("--tokens-column", default="tokens", help="ner: list<string> of words")
    p.add_argument("--tags-column", default="tags", help="ner: list<string> of BIO tags")
    p.add_argument("--multi-label", action="store_true", help="classify: label column is a list")
    _add_schedule_args(p, d)
    return p


def _add_schedule_args(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    """The flags of :class:`bertbeam.training.config._Schedule`, shared by train and distill."""
    p.add_argument("--max-eval-rows", type=int, default=d["max_eval_rows"],
                   help="held-out rows at most, whatever --eval-fraction says")
    p.add_argument("--allow-pickle-weights", action="store_true",
                   help="accept checkpoints with only .bin/.pt weights (pickle can run code)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, default=None,
                        help=f"optimizer steps (default: {DEFAULT_EPOCHS} epochs, at least "
                             f"{MIN_STEPS:,} steps and at most {MAX_EPOCHS} epochs, never more "
                             f"than {MAX_STEPS:,})")
    length.add_argument("--epochs", type=int, default=None,
                        help="passes over the training rows, instead of --max-steps")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="peak learning rate (default: by the model's hidden size: 1e-4 up to "
                        "512, 5e-5 up to 768, 2e-5 above)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="rows per optimizer step")
    p.add_argument("--token-budget", type=int, default=d["token_budget"],
                   help="padded tokens per batch at most (fewer rows per batch when "
                        "--batch-size rows of --max-length tokens would exceed it)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per row (default: the model's)")
    p.add_argument("--warmup-fraction", type=float, default=d["warmup_fraction"],
                   help="share of the steps the learning rate climbs for, then decays linearly to 0")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="AdamW weight decay")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between evaluations (default: an epoch, or an eighth of the "
                        "steps when that is sooner)")
    p.add_argument("--patience", type=int, default=d["patience"],
                   help="evaluations without improvement before stopping")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="seeds the new head, the held-out split and the batch order")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA with bf16 autocast where there is a GPU, else CPU float32")
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch CPU threads (default: all cores; 1 is faster on a busy shared machine)")
    p.add_argument("--model-cache-dir", default=None, help="local cache for remote models")


def _schedule(args: argparse.Namespace) -> dict[str, Any]:
    return {"eval_fraction": args.eval_fraction, "max_eval_rows": args.max_eval_rows,
            "epochs": args.epochs, "max_steps": args.max_steps,
            "learning_rate": args.learning_rate, "warmup_fraction": args.warmup_fraction,
            "weight_decay": args.weight_decay, "batch_size": args.batch_size,
            "token_budget": args.token_budget, "max_length": args.max_length,
            "eval_every": args.eval_every, "patience": args.patience, "seed": args.seed,
            "device": args.device, "num_threads": args.num_threads,
            "cache_dir": args.model_cache_dir, "allow_pickle_weights": args.allow_pickle_weights}


def _distill_parser() -> argparse.ArgumentParser:
    d = _schedule_defaults()
    p = argparse.ArgumentParser(
        prog="bertbeam distill", allow_abbrev=False, formatter_class=_DefaultsHelpFormatter,
        description="Distill a fine-tuned classifier (the teacher) into a smaller, faster one "
                    "(the student) on your corpus: the teacher labels the corpus through "
                    "bertbeam label (logits kept in Parquet; a rerun labels only what is not "
                    "labelled yet), the student learns its softened scores (and gold labels "
                    "where the corpus has them). The student works with `bertbeam label`.")
    p.add_argument("--teacher", required=True, help="a fine-tuned sequence classifier")
    p.add_argument("--corpus", required=True, help="Parquet glob of the documents")
    p.add_argument("--output", required=True,
                   help="student checkpoint directory: new, empty, or an earlier output")
    student = p.add_mutually_exclusive_group()
    student.add_argument("--student-layers", type=int, default=None,
                         help="the teacher's layers the student keeps, evenly spaced and ending "
                              "with its last (default: half of them)")
    student.add_argument("--student", default=None,
                         help="start the student from this (smaller) checkpoint instead, with a new head")
    p.add_argument("--soft-labels", default=None,
                   help="directory of the teacher's labels and the corpus shards "
                        "(default: OUTPUT-soft-labels)")
    p.add_argument("--id-column", default="id", help="document ids (unique)")
    p.add_argument("--text-column", default="text", help="the text both models read")
    p.add_argument("--label-column", default=None,
                   help="gold labels where the corpus has them (null elsewhere)")
    p.add_argument("--temperature", type=float, default=d["temperature"],
                   help="softens the teacher's and the student's scores in the KL term")
    p.add_argument("--gold-weight", type=float, default=d["gold_weight"],
                   help="the gold cross-entropy's share of the loss on rows with a gold label")
    p.add_argument("--hidden-weight", type=float, default=d["hidden_weight"],
                   help="weight of matching the teacher's intermediate layers (mean squared error "
                        "of the student's embeddings and layers against the teacher's same ones; "
                        "a student of the teacher's own layers only; 0: off)")
    p.add_argument("--augment", type=int, default=None,
                   help="variants of each document (words masked, replaced or dropped) that the "
                        f"teacher labels too (default: enough for {AUGMENT_TO_ROWS:,} documents, "
                        f"at most {AUGMENT_MOST} each; 0: none)")
    p.add_argument("--shard-rows", type=int, default=d["shard_rows"],
                   help="documents per teacher-labelling shard (an interrupted run redoes at most one)")
    p.add_argument("--eval-fraction", type=float, default=d["eval_fraction"],
                   help="share of the corpus held out to measure agreement with the teacher "
                        "(0: no evaluation, the last step is kept)")
    _add_schedule_args(p, d)
    return p


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after each flag's help, except where there is none (the help
    says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.required:
            return action.help or ""
        return super()._get_help_string(action)


def _evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bertbeam evaluate",
        description="Score `bertbeam label` results against gold rows, joined by id.")
    p.add_argument("--task", required=True, choices=["classify", "ner"])
    p.add_argument("--predictions", required=True, help="Parquet glob of bertbeam label results")
    p.add_argument("--gold", required=True, help="Parquet glob of gold rows")
    p.add_argument("--label-column", default="label")
    p.add_argument("--id-column", default="id", help="id column of the gold rows")
    p.add_argument("--tokens-column", default="tokens")
    p.add_argument("--tags-column", default="tags")
    p.add_argument("--text-column", default="text",
                   help="ner: gold text the tokens are found in, when present (else tokens joined by spaces)")
    p.add_argument("--multi-label", action="store_true")
    p.add_argument("--output", default=None, help="directory for _EVAL.json (default: beside the predictions)")
    p.add_argument("--reference", default=None,
                   help="Parquet glob of another model's label results on the same documents "
                        "(e.g. the teacher of a distilled student): adds agreement and both speeds")
    return p


def _run(prog: str, work: Callable[[], Any]) -> int:
    """Runs ``work``; a user error becomes one line on stderr and exit code 2, Ctrl-C or
    SIGTERM one line and 130 / 143 (the staging folder removed on the way out), a full disk
    or a refused write one line and 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with stopping.interrupts():
            work()
    except (TrainingDataError, ModelLoadError, ValueError, FileNotFoundError) as exc:
        print(f"bertbeam {prog}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"bertbeam {prog}: error: {exc.name!r} is not installed; bertbeam {prog} needs the "
              "train extra: pip install 'bertbeam[train]'.", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, stopping.Terminated)
        signum = stopping.interrupted_by() or (signal.SIGTERM if terminated else signal.SIGINT)
        print(f"bertbeam {prog}: interrupted; the output is as it was before this run.",
              file=sys.stderr)
        return 128 + signum
    except OSError as exc:
        line = stopping.environment_error(exc)
        if line is None:
            raise
        print(f"bertbeam {prog}: error: {line}", file=sys.stderr)
        return 1
    return 0


def run_train(argv: list[str]) -> int:
    """``bertbeam train ...``; returns the exit code."""
    args = _train_parser().parse_args(argv)

    def work() -> None:
        train(TrainConfig(
            task=args.task, train=args.train, eval=args.eval, output=args.output,
            model=args.model, id_column=args.id_column, text_column=args.text_column,
            label_column=args.label_column, tokens_column=args.tokens_column,
            tags_column=args.tags_column, multi_label=args.multi_label, **_schedule(args)))

    return _run("train", work)


def run_distill(argv: list[str]) -> int:
    """``bertbeam distill ...``; returns the exit code."""
    args = _distill_parser().parse_args(argv)

    def work() -> None:
        distill(DistillConfig(
            teacher=args.teacher, corpus=args.corpus, output=args.output, student=args.student,
            student_layers=args.student_layers, soft_labels=args.soft_labels,
            id_column=args.id_column, text_column=args.text_column,
            label_column=args.label_column, temperature=args.temperature,
            gold_weight=args.gold_weight, hidden_weight=args.hidden_weight,
            augment=args.augment, shard_rows=args.shard_rows, **_schedule(args)))

    return _run("distill", work)


def run_evaluate(argv: list[str]) -> int:
    """``bertbeam evaluate ...``; returns the exit code."""
    args = _evaluate_parser().parse_args(argv)

    def work() -> None:
        print_report(evaluate(EvalConfig(
            task=args.task, predictions=args.predictions, gold=args.gold,
            label_column=args.label_column, id_column=args.id_column,
            tokens_column=args.tokens_column, tags_column=args.tags_column,
            text_column=args.text_column, multi_label=args.multi_label, output=args.output,
            reference=args.reference)))

    return _run("evaluate", work)
