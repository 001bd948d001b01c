"""Frozen, validated configuration of ``bertbeam train`` and ``bertbeam evaluate``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bertbeam.config import EMBEDDED_MODEL, check_choice, check_positive

TrainTask = Literal["classify", "ner"]

# distill's augmentation by default: variants until the corpus has AUGMENT_TO_ROWS documents,
# at most AUGMENT_MOST per document (bertbeam.training.augment)
AUGMENT_TO_ROWS = 8_000
AUGMENT_MOST = 4
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
class _Schedule:
    """How a model is trained, shared by ``bertbeam train`` and ``bertbeam distill``. Every
    option left at ``None`` is chosen from the data and the model by
    :mod:`bertbeam.training.plan` and printed before training starts.

    Attributes:
        eval_fraction: share of the rows held out for evaluation when no evaluation rows are
            given; 0 trains without evaluation (no early stopping: the last step is kept).
        max_eval_rows: the held-out rows at most, whatever ``eval_fraction`` says (an
            evaluation of millions of rows would cost more than the training between two).
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
        cache_dir: local cache for remote models.
        allow_pickle_weights: accept a checkpoint whose only weights are pickle-based
            (``pytorch_model.bin``), which can run code when loaded.
    """

    eval_fraction: float = 0.1
    max_eval_rows: int = 2000
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

    def _check_schedule(self) -> None:
        check_choice("device", self.device, TrainDevice)
        check_positive("num_threads", self.num_threads, allow_none=True)
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
            _check_positive_number(name, value)
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, int | float) \
                or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a non-negative number, got {self.weight_decay!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("Give epochs or max_steps, not both: each sets the length of training.")


def _check_positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_LabelledData, _Schedule):
    """What to fine-tune, on which data, and how (the task and columns: ``_LabelledData``;
    the schedule: ``_Schedule``).

    Attributes:
        train: Parquet glob of the training rows (local, ``gs://``, any fsspec URL).
        output: directory of the checkpoint (local or any fsspec URL): empty, new, or the
            output of an earlier ``bertbeam train`` (whose checkpoint is replaced).
        eval: Parquet glob of the evaluation rows; ``None`` holds out ``eval_fraction`` of
            ``train`` (at most ``max_eval_rows``, stratified by label for ``classify``, seeded).
        model: the checkpoint to start from; the embedded all-MiniLM-L6-v2 by default.
    """

    train: str
    output: str
    eval: str | None = None
    model: str = EMBEDDED_MODEL

    def __post_init__(self) -> None:
        self._check_data("train", "output", "model")
        self._check_schedule()
        if self.eval is not None:
            _check_text("eval", self.eval)

    @property
    def evaluates(self) -> bool:
        """Whether the model is evaluated while it trains (an eval glob or a held-out share)."""
        return self.eval is not None or self.eval_fraction > 0


@dataclass(frozen=True, kw_only=True)
class DistillConfig(_Schedule):
    """A student classifier learned from a teacher's soft labels on a corpus (the schedule:
    ``_Schedule``; the held-out rows measure the student's agreement with the teacher).

    Attributes:
        teacher: a fine-tuned sequence classifier (single-label), e.g. ``bertbeam train``'s.
        corpus: Parquet glob of the documents (``id_column``, ``text_column``), unlabelled
            or partly labelled (``label_column``).
        output: directory of the student checkpoint (as ``TrainConfig.output``).
        student: the checkpoint the student starts from (its head is new); ``None``: the
            teacher with ``student_layers`` of its layers kept.
        student_layers: layers kept from the teacher, evenly spaced and ending with its last
            (6 -> 3 keeps layers 2, 4 and 6); ``None``: half of them, rounded up.
        soft_labels: directory of the teacher's labels (``logits`` in Parquet) and of the
            corpus shards it labels; ``None``: ``output`` + ``-soft-labels``. A rerun with
            the same corpus and teacher labels only the shards not labelled yet.
        label_column: gold labels where the corpus has them (null elsewhere): they add a
            cross-entropy term to the rows that have one.
        temperature: softens both distributions in the KL term (Hinton et al.).
        gold_weight: the cross-entropy's share of the loss on rows with a gold label.
        hidden_weight: weight of the intermediate-layer term: the mean squared error between
            the student's embeddings and kept layers and the teacher's same layers
            (TinyBERT); 0 turns it off. Only for a student of the teacher's own layers.
        augment: variants of each document the teacher also labels (words masked, replaced
            or dropped; :mod:`bertbeam.training.augment`); ``None``: enough to bring the
            corpus to ``AUGMENT_TO_ROWS`` documents, at most ``AUGMENT_MOST`` each.
        shard_rows: documents per teacher-labelling shard: an interrupted run redoes at most
            one shard.
    """

    teacher: str
    corpus: str
    output: str
    student: str | None = None
    student_layers: int | None = None
    soft_labels: str | None = None
    id_column: str = "id"
    text_column: str = "text"
    label_column: str | None = None
    temperature: float = 2.0
    gold_weight: float = 0.5
    hidden_weight: float = 1.0
    augment: int | None = None
    shard_rows: int = 10_000

    def __post_init__(self) -> None:
        for name in ("teacher", "corpus", "output", "id_column", "text_column"):
            _check_text(name, getattr(self, name))
        for name in ("student", "soft_labels", "label_column"):
            if getattr(self, name) is not None:
                _check_text(name, getattr(self, name))
        if self.student is not None and self.student_layers is not None:
            raise ValueError("Give student or student_layers, not both: a given student keeps "
                             "its own layers.")
        check_positive("student_layers", self.student_layers, allow_none=True)
        check_positive("shard_rows", self.shard_rows)
        _check_positive_number("temperature", self.temperature)
        if isinstance(self.gold_weight, bool) or not isinstance(self.gold_weight, int | float) \
                or not 0 <= self.gold_weight <= 1:
            raise ValueError(f"gold_weight must be a number in [0, 1], got {self.gold_weight!r}.")
        if isinstance(self.hidden_weight, bool) or not isinstance(self.hidden_weight, int | float) \
                or self.hidden_weight < 0:
            raise ValueError(f"hidden_weight must be a non-negative number, got {self.hidden_weight!r}.")
        if self.augment is not None and (isinstance(self.augment, bool)
                                         or not isinstance(self.augment, int) or self.augment < 0):
            raise ValueError(f"augment must be a non-negative integer or None, got {self.augment!r}.")
        self._check_schedule()

    @property
    def soft_labels_dir(self) -> str:
        return self.soft_labels or f"{self.output.rstrip('/')}-soft-labels"


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
