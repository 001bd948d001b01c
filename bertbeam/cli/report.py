"""``bertbeam report OUTPUT [--previous OUTPUT] [--threshold X]``: a finished run's
``_REPORT.html`` (and its PNGs), written again or against another run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bertbeam.cli.options import CommandParser, UsageError
from bertbeam.run.report import MOVE_THRESHOLD, write_report


def parser() -> CommandParser:
    p = CommandParser("bertbeam report", "Write OUTPUT/_REPORT.html (and its PNGs) for a "
                                         "finished run.", epilog=None)
    p.add_argument("output", help="output directory of a finished run (with _SUMMARY.json)")
    p.add_argument("--previous", default=None, help="an earlier run's output directory")
    p.add_argument("--threshold", type=float, default=MOVE_THRESHOLD,
                   help="flag labels whose share moved more than this (0.05 = 5 points)")
    return p


def run(argv: Sequence[str]) -> int:
    """Writes the report; returns the exit status (2: a bad command line or a run without a
    readable summary)."""
    try:
        args = parser().parse_args([str(a) for a in argv])
    except UsageError as exc:
        print(f"bertbeam report: error: {exc}", file=sys.stderr)
        return 2
    return _write(args)


def _write(args: argparse.Namespace) -> int:
    try:
        url = write_report(args.output, previous=args.previous, threshold=args.threshold)
    except (OSError, ValueError) as exc:
        print(f"bertbeam: error: cannot write the report of {args.output!r}: {exc}",
              file=sys.stderr)
        return 2
    print(f"wrote {url}")
    return 0
