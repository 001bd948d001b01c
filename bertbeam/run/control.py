"""How a job runs, as opposed to what it computes: earlier runs to carry rows from, waiting,
the report, what it prints. The flags every task job takes besides the common ones."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_control_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("nightly runs")
    # The defaults live on the parser: with default=SUPPRESS on each flag, --help does not
    # print "(default: True)" after --no-wait (its help says what the default does).
    parser.set_defaults(previous=[], wait=True, report=True, quiet=False, log_level=None)
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


@dataclass(frozen=True)
class RunControl:
    """The nightly-run flags of a job, and every option it was given (for the summary)."""

    previous: tuple[str, ...] = ()
    wait: bool = True
    report: bool = True
    quiet: bool = False
    log_level: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def run_control(args: argparse.Namespace, beam_args: list[str]) -> RunControl:
    return RunControl(
        previous=tuple(args.previous), wait=args.wait, report=args.report, quiet=args.quiet,
        log_level=args.log_level,
        options={"bertbeam": {k: v for k, v in sorted(vars(args).items())}, "beam": list(beam_args)})
