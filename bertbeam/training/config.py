"""Frozen, validated configuration of ``bertbeam train`` and ``bertbeam evaluate``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bertbeam.config import EMBEDDED_MODEL, check_choice, check_positive

TrainTask = Literal["classify", "ner"]
TrainDevice = Literal["auto", "cpu", "cuda"]


def _check_fraction(name: str, value: object, *, upper: float = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < upper:
        raise ValueError(f"{name} must be a number in [0, {upper:g}), got {value!r}.")


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class _LabelledData:
    """The task and the columns of labelled rows, shared by training and evaluation.

    Attributes:
        task: ``classify`` (a text column and a label column) or ``ner`` (a column of words
            and a column of BIO tags, one per word).
        id_column: the rows' ids (messages name skipped rows by id; evaluation joins on it).
        text_column: classify: the text; ner: the text the words are found in, in order,
            when the rows have it (else the words joined by single spaces).
        label_column: classify: a label, or with ``multi_label`` a list of labels.
        tokens_column / tags_column: ner: ``list<string>`` of words and of their BIO tags.
        multi_label: classify only: several labels per row, scored with sigmoids.
    """

    task: TrainTask
    id_column: str = "id"
    text_column: str = "text"
    label_column: str = "label"
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    multi_label: bool = False

    def _check_data(self, *locations: str) -> None:
        check_choice("task", self.task, TrainTask)
        for name in ("id_column", "text_column", "label_column", "tokens_column", "tags_column",
                     *locations):
            _check_text(name, getattr(self, name))
        if self.multi_label and self.task != "classify":
            raise ValueError(f"multi_label is for task 'classify' only, got task {self.task!r}.")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_LabelledData):
    """What to fine-tune, on which data, and how (the task and columns: ``_LabelledData``).

    Every schedule option left at ``None`` is chosen from the data and the model by
    :mod:`bertbeam.training.plan` and printed before training starts.

    Attributes:
        train: Parquet glob of the training rows (local, ``gs://``, any fsspec URL).
        output: directory of the checkpoint (local or any fsspec URL): empty, new, or the
            output of an earlier ``bertbeam train`` (whose checkpoint is replaced).
        eval: Parquet glob of the evaluation rows; ``None`` holds out ``eval_fraction`` of
            ``train`` (at most ``max_eval_rows``, stratified by label for ``classify``, seeded).
        eval_fraction: held-out share when ``eval`` is ``None``; 0 trains without evaluation
            (no early stopping: the last step's model is kept).
        max_eval_rows: the held-out rows at most, whatever ``eval_fraction`` says (an
            evaluation of millions of rows would cost more than the training between two).
        model: the checkpoint to start from; the embedded all-MiniLM-L6-v2 by default.
        epochs: passes over the training rows; ``None``: as many as the planned steps make.
        max_steps: optimizer steps; ``None``: planned from the rows (``epochs`` passes when
            given, else 4 epochs, at least 500 steps and at most 30 epochs, at most 10,000).
        learning_rate: peak AdamW learning rate, reached after ``warmup_fraction`` of the
            steps and decayed linearly to 0; ``None``: by the model's hidden size (1e-4 up
            to 512, 5e-5 up to 768, 2e-5 above).
        batch_size: rows per optimizer step (fewer when ``token_budget`` says so).
        token_budget: padded tokens per batch at most: a batch has at most
            ``token_budget // max_length`` rows, so no batch can exceed it.
        max_length: tokens per row; longer rows are truncated. ``None``: the model's limit.
        eval_every: optimizer steps between evaluations; ``None``: an epoch, or an eighth
            of the steps when that is sooner.
        patience: stop after this many evaluations without improvement; the best
            checkpoint is the one written.
        seed: seeds the head's initialisation, the split and the batch order.
        device: ``auto`` trains on CUDA (bf16 autocast) when there is a GPU, else on CPU
            (float32).
        num_threads: torch CPU threads; ``None`` keeps torch's default (all cores). On a
            machine shared with other busy processes, 1 can be several times faster: each
            step waits for its slowest thread.
        allow_pickle_weights: accept a start checkpoint whose only weights are pickle-based
            (``pytorch_model.bin``), which can run code when loaded.
    """

    train: str
    output: str
    eval: str | None = None
    eval_fraction: float = 0.1
    max_eval_rows: int = 2000
    model: str = EMBEDDED_MODEL
    epochs: int | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    batch_size: int = 16
    token_budget: int = 8192
    max_length: int | None = None
    eval_every: int | None = None
    patience: int = 3
    seed: int = 42
    device: TrainDevice = "auto"
    num_threads: int | None = None
    cache_dir: str | None = None
    allow_pickle_weights: bool = False

    def __post_init__(self) -> None:
        self._check_data("train", "output", "model")
        check_choice("device", self.device, TrainDevice)
        check_positive("num_threads", self.num_threads, allow_none=True)
        if self.eval is not None:
            _check_text("eval", self.eval)
        _check_fraction("eval_fraction", self.eval_fraction)
        _check_fraction("warmup_fraction", self.warmup_fraction)
        for name in ("token_budget", "batch_size", "patience", "max_eval_rows"):
            check_positive(name, getattr(self, name))
        for name in ("epochs", "max_steps", "max_length", "eval_every"):
            check_positive(name, getattr(self, name), allow_none=True)
        for name in ("learning_rate", "max_grad_norm"):
            value = getattr(self, name)
            if value is None and name == "learning_rate":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, int | float) \
                or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a non-negative number, got {self.weight_decay!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("Give epochs or max_steps, not both: each sets the length of training.")

    @property
    def evaluates(self) -> bool:
        """Whether the model is evaluated while it trains (an eval glob or a held-out share)."""
        return self.eval is not None or self.eval_fraction > 0


@dataclass(frozen=True, kw_only=True)
class EvalConfig(_LabelledData):
    """What ``bertbeam evaluate`` compares (the gold rows' task and columns:
    ``_LabelledData``). classify compares the predicted ``label`` (``labels`` with
    ``multi_label``) with ``label_column``; ner compares the predicted ``entities`` with the
    entities of ``tokens_column`` / ``tags_column``.

    Attributes:
        predictions: Parquet glob of ``bertbeam label`` results.
        gold: Parquet glob of the gold rows, joined to predictions on ``id_column``.
        output: directory for ``_EVAL.json`` (and ``confusion_matrix.png`` for
            ``classify``); ``None`` writes beside the predictions.
        reference: Parquet glob of another model's ``bertbeam label`` results on the same
            documents (a distilled student's teacher): the report adds the agreement of the
            two and both models' speed.
    """

    predictions: str
    gold: str
    output: str | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        self._check_data("predictions", "gold")
        for name in ("output", "reference"):
            if getattr(self, name) is not None:
                _check_text(name, getattr(self, name))
