"""The training plan: how many optimizer steps, of how many rows, at what learning rate,
evaluated how often, chosen from the size of the data and of the model.

Users run the defaults, so the defaults must suit a few hundred rows and millions alike:

- steps, not epochs: 4 epochs, but at least ``MIN_STEPS`` (a few hundred rows need many
  passes to move a freshly initialised head) and at most ``MAX_EPOCHS`` passes, and never
  more than ``MAX_STEPS`` (millions of rows: a fraction of an epoch is plenty);
- ``batch_size`` rows per step (16, as transformers' examples fine-tune), fewer only when
  ``token_budget // max_length`` says a batch could not fit;
- the learning rate by the model's hidden size (small models take larger steps);
- an evaluation every epoch, or every eighth of the steps when that is sooner, so there are
  enough evaluations for early stopping to keep the best checkpoint.

The plan is printed before training (:meth:`TrainPlan.describe`) and kept in ``_TRAIN.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

MIN_STEPS = 500
MAX_STEPS = 10_000
DEFAULT_EPOCHS = 4
MAX_EPOCHS = 30
EVALUATIONS = 8


def default_learning_rate(hidden_size: int | None) -> float:
    """1e-4 for small models (hidden size up to 512: MiniLM, small BERTs), 5e-5 for base
    models (768), 2e-5 for larger ones, as their model cards fine-tune them."""
    if hidden_size is None or hidden_size <= 512:
        return 1e-4
    return 5e-5 if hidden_size <= 768 else 2e-5


def rows_per_batch(batch_size: int, token_budget: int, max_length: int) -> int:
    """``batch_size``, or fewer rows when ``batch_size`` rows of ``max_length`` tokens would
    exceed ``token_budget`` padded tokens."""
    return max(1, min(batch_size, token_budget // max_length))


def plan_steps(steps_per_epoch: int, *, epochs: int | None, max_steps: int | None) -> int:
    """Optimizer steps: ``max_steps`` or ``epochs`` passes when given; else
    ``DEFAULT_EPOCHS`` passes, at least ``MIN_STEPS`` and at most ``MAX_EPOCHS`` passes,
    never more than ``MAX_STEPS``."""
    if max_steps is not None:
        return max_steps
    if epochs is not None:
        return epochs * steps_per_epoch
    steps = max(DEFAULT_EPOCHS * steps_per_epoch, MIN_STEPS)
    return max(1, min(steps, MAX_EPOCHS * steps_per_epoch, MAX_STEPS))


@dataclass(frozen=True)
class TrainPlan:
    """What a training run will do; every number is printed before it starts."""

    train_rows: int
    eval_rows: int
    eval_source: str  # where the evaluation rows come from, and why
    batch_size: int
    steps_per_epoch: int
    steps: int
    learning_rate: float
    learning_rate_source: str
    warmup_steps: int
    eval_every: int | None
    patience: int

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch

    def describe(self) -> str:
        """The plan in two lines: data, then schedule."""
        evaluation = (f"evaluate every {self.eval_every} steps; stop after {self.patience} "
                      "evaluations without improvement and keep the best"
                      if self.eval_every else "no evaluation: the last step's model is kept")
        return (f"{self.train_rows:,} training rows; {self.eval_source}\n"
                f"plan: {self.steps:,} steps of {self.batch_size} rows ({self.epochs:.1f} epochs), "
                f"learning rate {self.learning_rate:g} ({self.learning_rate_source}) with "
                f"{self.warmup_steps} warm-up steps; {evaluation}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epochs": round(self.epochs, 3)}


def plan_for(schedule: Any, *, train_rows: int, eval_rows: int, eval_source: str,
             max_length: int, hidden_size: int | None) -> TrainPlan:
    """:func:`make_plan` with the options of a ``TrainConfig`` or ``DistillConfig`` (their
    shared schedule fields)."""
    return make_plan(
        train_rows=train_rows, eval_rows=eval_rows, eval_source=eval_source,
        batch_size=schedule.batch_size, token_budget=schedule.token_budget,
        max_length=max_length, epochs=schedule.epochs, max_steps=schedule.max_steps,
        learning_rate=schedule.learning_rate, hidden_size=hidden_size,
        warmup_fraction=schedule.warmup_fraction, eval_every=schedule.eval_every,
        patience=schedule.patience)


def make_plan(*, train_rows: int, eval_rows: int, eval_source: str, batch_size: int,
              token_budget: int, max_length: int, epochs: int | None, max_steps: int | None,
              learning_rate: float | None, hidden_size: int | None, warmup_fraction: float,
              eval_every: int | None, patience: int) -> TrainPlan:
    """The plan for ``train_rows`` rows (see the module's docstring for the rules)."""
    batch = rows_per_batch(batch_size, token_budget, max_length)
    per_epoch = math.ceil(train_rows / batch)
    steps = plan_steps(per_epoch, epochs=epochs, max_steps=max_steps)
    if learning_rate is None:
        lr, lr_source = default_learning_rate(hidden_size), f"for hidden size {hidden_size}"
    else:
        lr, lr_source = learning_rate, "given"
    every = None
    if eval_rows:
        every = eval_every or max(1, min(per_epoch, math.ceil(steps / EVALUATIONS)))
    return TrainPlan(
        train_rows=train_rows, eval_rows=eval_rows, eval_source=eval_source, batch_size=batch,
        steps_per_epoch=per_epoch, steps=steps, learning_rate=lr,
        learning_rate_source=lr_source, warmup_steps=math.ceil(steps * warmup_fraction),
        eval_every=every, patience=patience)
