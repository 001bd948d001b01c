"""``bertbeam train`` and ``bertbeam evaluate``: argv -> config -> run, one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from bertbeam.config import EMBEDDED_MODEL


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bertbeam train",
        description="Fine-tune a sequence classifier (classify) or a token tagger (ner) from "
                    "Parquet; the checkpoint works with `bertbeam label --model DIR`.")
    p.add_argument("--task", required=True, choices=["classify", "ner"])
    p.add_argument("--train", required=True, help="Parquet glob of training rows")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--eval", default=None, help="Parquet glob of evaluation rows")
    split.add_argument("--eval-fraction", type=float, default=0.1,
                       help="share of --train held out for evaluation when there is no --eval; "
                            "0: no evaluation (default 0.1)")
    p.add_argument("--output", required=True, help="checkpoint directory (local or gs://...)")
    p.add_argument("--model", default=EMBEDDED_MODEL, help=f"start checkpoint (default {EMBEDDED_MODEL})")
    p.add_argument("--id-column", default="id")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--tokens-column", default="tokens", help="ner: list<string> of words")
    p.add_argument("--tags-column", default="tags", help="ner: list<string> of BIO tags")
    p.add_argument("--multi-label", action="store_true", help="classify: label column is a list")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--warmup-fraction", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--token-budget", type=int, default=4096, help="padded tokens per batch")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=None, help="tokens per row (default: the model's)")
    p.add_argument("--patience", type=int, default=2, help="evaluations without improvement before stopping")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch CPU threads (default: all cores; 1 is faster on a busy shared machine)")
    p.add_argument("--model-cache-dir", default=None)
    return p


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
    return p


def _run(prog: str, work: Callable[[], Any]) -> int:
    """Runs ``work``; a user error becomes one line on stderr and exit code 2."""
    from bertbeam.core.models import ModelLoadError
    from bertbeam.training.data import TrainingDataError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        work()
    except (TrainingDataError, ModelLoadError, ValueError, FileNotFoundError) as exc:
        print(f"bertbeam {prog}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"bertbeam {prog}: error: {exc.name!r} is not installed; bertbeam {prog} needs the "
              "train extra: pip install 'bertbeam[train]'.", file=sys.stderr)
        return 2
    return 0


def run_train(argv: list[str]) -> int:
    """``bertbeam train ...``; returns the exit code."""
    args = _train_parser().parse_args(argv)

    def work() -> None:
        from bertbeam.training.config import TrainConfig
        from bertbeam.training.loop import train

        train(TrainConfig(
            task=args.task, train=args.train, eval=args.eval, eval_fraction=args.eval_fraction,
            output=args.output, model=args.model, id_column=args.id_column,
            text_column=args.text_column, label_column=args.label_column,
            tokens_column=args.tokens_column, tags_column=args.tags_column,
            multi_label=args.multi_label, epochs=args.epochs, max_steps=args.max_steps,
            learning_rate=args.learning_rate, warmup_fraction=args.warmup_fraction,
            weight_decay=args.weight_decay, token_budget=args.token_budget,
            max_batch_size=args.max_batch_size, max_length=args.max_length,
            patience=args.patience, seed=args.seed, device=args.device,
            num_threads=args.num_threads, cache_dir=args.model_cache_dir))

    return _run("train", work)


def run_evaluate(argv: list[str]) -> int:
    """``bertbeam evaluate ...``; returns the exit code."""
    args = _evaluate_parser().parse_args(argv)

    def work() -> None:
        from bertbeam.training.config import EvalConfig
        from bertbeam.training.evaluate import evaluate, print_report

        print_report(evaluate(EvalConfig(
            task=args.task, predictions=args.predictions, gold=args.gold,
            label_column=args.label_column, id_column=args.id_column,
            tokens_column=args.tokens_column, tags_column=args.tags_column,
            text_column=args.text_column, multi_label=args.multi_label, output=args.output)))

    return _run("evaluate", work)
