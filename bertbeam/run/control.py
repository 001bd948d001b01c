"""How a job runs, as opposed to what it computes: earlier runs to carry rows from, waiting,
the report, what it prints, how many dead letters fail it. Their flags are
:class:`bertbeam.cli.options.JobOptions`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_DEAD_LETTER_FRACTION = 0.25
"""The default ``--max-dead-letter-fraction``: a wrong column, a wrong model or a broken input
dead-letters most rows and fails the run; a corpus with a few bad rows (empty texts, broken
ids: a few percent) never does."""


@dataclass(frozen=True)
class RunControl:
    """The nightly-run flags of a job, and every option it was given (for the summary)."""

    previous: tuple[str, ...] = ()
    wait: bool = True
    report: bool = True
    quiet: bool = False
    log_level: str | None = None
    max_dead_letter_fraction: float = MAX_DEAD_LETTER_FRACTION
    max_dead_letters: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_dead_letter_fraction <= 1.0:
            raise ValueError(f"max_dead_letter_fraction must be between 0 and 1, got "
                             f"{self.max_dead_letter_fraction!r}.")
        if self.max_dead_letters is not None and self.max_dead_letters < 0:
            raise ValueError(f"max_dead_letters must be 0 or more, got {self.max_dead_letters!r}.")
