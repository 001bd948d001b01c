"""The training plan (issue 26): steps from the data's size (enough for a few hundred rows,
capped for millions), rows per step within the token budget, the learning rate by the
model's size, evaluations often enough for early stopping, and every default in
``train --help``."""

from __future__ import annotations

import pytest

from bertbeam.training.plan import (
    MAX_STEPS,
    MIN_STEPS,
    default_learning_rate,
    make_plan,
    plan_steps,
    rows_per_batch,
)


def _plan(rows: int, **kwargs):
    options = {"train_rows": rows, "eval_rows": 100, "eval_source": "test", "batch_size": 16,
               "token_budget": 8192, "max_length": 256, "epochs": None, "max_steps": None,
               "learning_rate": None, "hidden_size": 384, "warmup_fraction": 0.1,
               "eval_every": None, "patience": 3, **kwargs}
    return make_plan(**options)


@pytest.mark.parametrize(("rows", "steps", "epochs"), [
    (300, 500, 500 / 19),      # a few hundred rows: at least MIN_STEPS (26 epochs)
    (100, 210, 30),            # fewer: at most 30 epochs
    (1_399, 500, 500 / 88),    # the demo labels: 4 epochs would be 352 steps
    (20_000, 5_000, 4),        # 4 epochs
    (3_000_000, MAX_STEPS, MAX_STEPS / 187_500),  # millions: capped
])
def test_steps_follow_the_size_of_the_data(rows, steps, epochs):
    plan = _plan(rows)
    assert plan.steps == steps
    assert plan.epochs == pytest.approx(epochs)
    assert plan.warmup_steps == -(-steps // 10)


def test_given_epochs_or_steps_win():
    assert plan_steps(100, epochs=2, max_steps=None) == 200
    assert plan_steps(100, epochs=None, max_steps=7) == 7
    assert plan_steps(1, epochs=None, max_steps=None) == 30  # 30 epochs of one step
    assert plan_steps(1_000, epochs=None, max_steps=None) == 4_000 > MIN_STEPS


def test_rows_per_step_fit_the_token_budget():
    assert rows_per_batch(16, 8192, 256) == 16
    assert rows_per_batch(16, 8192, 1024) == 8
    assert rows_per_batch(16, 100, 512) == 1
    assert _plan(1_000, max_length=2048).batch_size == 4


@pytest.mark.parametrize(("hidden", "rate"), [(32, 1e-4), (384, 1e-4), (768, 5e-5), (1024, 2e-5)])
def test_learning_rate_by_model_size(hidden, rate):
    assert default_learning_rate(hidden) == rate
    plan = _plan(1_000, hidden_size=hidden)
    assert plan.learning_rate == rate and plan.learning_rate_source == f"for hidden size {hidden}"
    assert _plan(1_000, hidden_size=hidden, learning_rate=3e-4).learning_rate == 3e-4


def test_evaluations_are_frequent_enough_for_early_stopping():
    """An epoch or an eighth of the steps, whichever is sooner; none without eval rows."""
    assert _plan(1_399).eval_every == 63            # 500 steps / 8 < 88 steps an epoch
    assert _plan(20_000).eval_every == 625          # 5,000 / 8 < 1,250
    assert _plan(100, eval_every=5).eval_every == 5
    assert _plan(1_399, eval_rows=0).eval_every is None
    assert "no evaluation: the last step's model is kept" in _plan(1_399, eval_rows=0).describe()


def test_the_plan_says_every_number():
    text = _plan(1_399, eval_source="156 of 1,555 held out").describe()
    assert text.splitlines() == [
        "1,399 training rows; 156 of 1,555 held out",
        "plan: 500 steps of 16 rows (5.7 epochs), learning rate 0.0001 (for hidden size 384) "
        "with 50 warm-up steps; evaluate every 63 steps; stop after 3 evaluations without "
        "improvement and keep the best"]


def test_train_help_shows_every_default(capsys):
    """Each flag of `bertbeam train --help` has a help line; every flag with a default
    shows it, and the planned ones say how they are planned."""
    from bertbeam.cli.train import _train_parser

    parser = _train_parser()
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, action.option_strings
        if action.default not in (None, False) and not action.required:
            assert f"(default: {action.default})" in " ".join(text.split()), action.option_strings
    flat = " ".join(text.split())
    for said in ("(default: 4 epochs, at least 500 steps and at most 30 epochs, never more than 10,000)",
                 "(default: by the model's hidden size: 1e-4 up to 512, 5e-5 up to 768, 2e-5 above)",
                 "rows per optimizer step (default: 16)"):
        assert said in flat


def test_distill_help_shows_every_default():
    """`bertbeam distill --help`: every flag with a default shows it, and the planned ones
    (augmentation, schedule) say how they are chosen."""
    from bertbeam.cli.train import _distill_parser

    parser = _distill_parser()
    flat = " ".join(parser.format_help().split())
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, action.option_strings
        if action.default not in (None, False) and not action.required:
            assert f"(default: {action.default})" in flat, action.option_strings
    for said in ("(default: enough for 8,000 documents, at most 4 each; 0: none)",
                 "a student of the teacher's own layers only; 0: off) (default: 1.0)",
                 "(default: 2.0)", "(default: 0.5)"):
        assert said in flat
