"""Entry point of the bertbeam Dataflow Flex Template (``docker/Dockerfile.flex``).

Dataflow's template launcher runs this file with the template's parameters as flags
(``--command=label --task=classify --input=gs://… --output=gs://…``) and the job's pipeline
options; it runs ``bertbeam COMMAND … --no-wait``, so the job writes its own
``_SUMMARY.json`` and report, and this process exits once the job is submitted.

    python pipelines/flex_template.py --command=embed --input=… --output=… [Beam options]
"""

from __future__ import annotations

import sys

COMMANDS = ("embed", "label")


def flex_argv(argv: list[str]) -> list[str]:
    """The ``bertbeam`` argv for the template's flags: ``--command`` (default ``embed``)
    becomes the subcommand, everything else passes through, and ``--no-wait`` is added."""
    command, rest = "embed", []
    args = iter(argv)
    for arg in args:
        if arg == "--command":
            command = next(args, "")
        elif arg.startswith("--command="):
            command = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if command not in COMMANDS:
        raise ValueError(f"Invalid --command: {command!r}. Valid commands are: {', '.join(COMMANDS)}.")
    return [command, *rest, "--no-wait"]


def main(argv: list[str] | None = None) -> int:
    from bertbeam.cli import main as bertbeam_main

    try:
        args = flex_argv(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"bertbeam: error: {exc}", file=sys.stderr)
        return 2
    return bertbeam_main(args)


if __name__ == "__main__":
    sys.exit(main())
