"""How a job runs, as opposed to what it computes: earlier runs to carry rows from, waiting,
the report, what it prints. The flags every task job takes besides the common ones."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_DEAD_LETTER_FRACTION = 0.25
"""The default ``--max-dead-letter-fraction``: a wrong column, a wrong model or a broken input
dead-letters most rows and fails the run; a corpus with a few bad rows (empty texts, broken
ids: a few percent) never does."""


def add_control_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("nightly runs")
    # The defaults live on the parser: with default=SUPPRESS on each flag, --help does not
    # print "(default: True)" after --no-wait (its help says what the default does).
    parser.set_defaults(previous=[], wait=True, report=True, quiet=False, log_level=None,
                        max_dead_letter_fraction=MAX_DEAD_LETTER_FRACTION, max_dead_letters=None)
    g.add_argument("--previous", action="append", default=argparse.SUPPRESS, metavar="LOCATION",
                   help="output directory of an earlier run of this job (repeatable): rows of "
                        "unchanged documents are carried forward instead of computed again")
    g.add_argument("--no-wait", dest="wait", action="store_false", default=argparse.SUPPRESS,
                   help="return once the job is submitted: the pipeline writes _SUMMARY.json "
                        "(and the report) itself, after the outputs (Dataflow Flex Templates)")
    g.add_argument("--no-report", dest="report", action="store_false", default=argparse.SUPPRESS,
                   help="do not write _REPORT.html and its figures")
    g.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="print the summary line only: no start line, no progress")
    g.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=argparse.SUPPRESS,
                   help="level of bertbeam's log messages (default: WARNING, ERROR with --quiet)")
    g.add_argument("--max-dead-letter-fraction", type=_fraction, default=argparse.SUPPRESS,
                   metavar="F",
                   help="fail the run (exit 4, after writing and accounting for every row) when "
                        "more than this fraction of the rows read is dead-lettered "
                        f"(default: {MAX_DEAD_LETTER_FRACTION}; 1 never fails)")
    g.add_argument("--max-dead-letters", type=_count, default=argparse.SUPPRESS, metavar="N",
                   help="fail the run (exit 4) when more than N rows are dead-lettered "
                        "(default: no limit on the count)")


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value!r}")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a count of rows (0 or more), got {value!r}")
    return number


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


def run_control(args: argparse.Namespace, beam_args: list[str]) -> RunControl:
    return RunControl(
        previous=tuple(args.previous), wait=args.wait, report=args.report, quiet=args.quiet,
        log_level=args.log_level, max_dead_letter_fraction=args.max_dead_letter_fraction,
        max_dead_letters=args.max_dead_letters,
        options={"bertbeam": {k: v for k, v in sorted(vars(args).items())}, "beam": list(beam_args)})
