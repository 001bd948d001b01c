"""``bertbeam report OUTPUT [--previous OUTPUT] [--threshold X] [--windows START..END]``: a
finished run's ``_REPORT.html`` (and its PNGs), written again or against another run; a
streaming run's, over its windows (all, or those from START to END), while it runs or after."""

from __future__ import annotations

import argparse
import datetime as dt
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
    p.add_argument("--windows", type=window_range, default=None, metavar="START..END",
                   help="a streaming run: only the windows from START to END (UTC times such "
                        "as 2026-12-06T09:00; either may be left out: START.. or ..END)")
    return p


def window_range(value: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``START..END`` (ISO 8601 times, UTC unless they say otherwise; either may be empty)
    as aware datetimes."""
    if ".." not in value:
        raise argparse.ArgumentTypeError(f"expected START..END, got {value!r}")
    ends = []
    for part in value.split("..", 1):
        part = part.strip()
        if not part:
            ends.append(None)
            continue
        try:
            when = dt.datetime.fromisoformat(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a time such as 2026-12-06T09:00 or 20261206T090000Z") from None
        ends.append(when if when.tzinfo else when.replace(tzinfo=dt.UTC))
    if ends[0] is not None and ends[1] is not None and ends[0] >= ends[1]:
        raise argparse.ArgumentTypeError(f"the range {value!r} ends before it starts")
    return ends[0], ends[1]


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
        url = write_report(args.output, previous=args.previous, threshold=args.threshold,
                           windows=args.windows)
    except (OSError, ValueError) as exc:
        print(f"bertbeam: error: cannot write the report of {args.output!r}: {exc}",
              file=sys.stderr)
        return 2
    print(f"wrote {url}")
    return 0
