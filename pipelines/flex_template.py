"""Entry point of the bertbeam Dataflow Flex Template (``docker/Dockerfile.flex``).

Dataflow's template launcher runs this file with the template's parameters as flags
(``--command=label --task=classify --input=gs://… --token_budget=4096``) and the job's
pipeline options; it runs ``bertbeam COMMAND … --no-wait``, so the job writes its own
``_SUMMARY.json`` and report, and this process exits once the job is submitted.

    python pipelines/flex_template.py --command=embed --input=… --output=… [Beam options]

The template's parameters are bertbeam's pipeline options (``bertbeam.cli.options``), one
parameter per option, named as the option's attribute (``token_budget`` for
``--token-budget``); switches take ``true`` or ``false``. ``metadata()`` derives
``docker/flex-template-metadata.json`` from the options classes; after changing an option,
write it again::

    python -c "from pipelines.flex_template import write_metadata; write_metadata()"
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from bertbeam.cli import main as bertbeam_main
from bertbeam.cli import options
from bertbeam.cli.options import EmbedOptions, JobOptions, LabelOptions, option_actions

COMMANDS = ("embed", "label")
METADATA = Path(__file__).resolve().parents[1] / "docker" / "flex-template-metadata.json"
DESCRIPTION = (
    "Embed or label a Parquet corpus with a BERT-family model. With previous, rows of documents "
    "unchanged since that run are carried forward instead of computed again. The job writes "
    "_SUMMARY.json and _REPORT.html next to its results.")
FIXED = {"wait": "the template always runs with --no-wait: the job writes its own summary"}
"""Options that are not parameters, and why."""
LOCATIONS = ("input", "output", "previous")
"""Parameters that must be Cloud Storage locations: the workers read and write them."""


def template_options() -> dict[str, tuple[str, argparse.Action]]:
    """Parameter name -> (the command that takes it, or ``""`` for both; its flag's action)."""
    params: dict[str, tuple[str, argparse.Action]] = {}
    for command, classes in (("", (JobOptions,)), ("embed", (EmbedOptions,)),
                             ("label", (LabelOptions,))):
        for dest, action in option_actions(classes).items():
            if dest not in FIXED:
                params[dest] = (command, action)
    return params


def flex_argv(argv: list[str]) -> list[str]:
    """The ``bertbeam`` argv for the template's flags: ``--command`` (default ``embed``)
    becomes the subcommand, each parameter its option's flag (a switch given ``true`` its
    flag, ``false`` nothing), everything else (Beam's options) passes through, and
    ``--no-wait`` is added."""
    params = template_options()
    command, rest = "embed", []
    args = iter(argv)
    for arg in args:
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name == "command":
            command = value if eq else next(args, "")
        elif name in params and eq:
            rest += _flag(params[name][1], name, value)
        else:
            rest.append(arg)
    if command not in COMMANDS:
        raise ValueError(f"Invalid --command: {command!r}. Valid commands are: {', '.join(COMMANDS)}.")
    return [command, *rest, "--no-wait"]


def _flag(action: argparse.Action, name: str, value: str) -> list[str]:
    flag = action.option_strings[0]
    if action.nargs != 0:
        return [f"{flag}={value}"]
    if value.lower() not in ("true", "false"):
        raise ValueError(f"Invalid {name}={value!r}: the parameter takes true or false.")
    # A switch's flag sets its option to the flag's constant (--no-wait: wait=False).
    return [flag] if str(action.const).lower() == value.lower() else []


def metadata() -> dict[str, Any]:
    """The template's metadata: one parameter per bertbeam pipeline option, and ``command``."""
    parameters = [{"name": "command", "label": "Command", "helpText": "embed (default) or label",
                   "isOptional": True, "regexes": ["^(embed|label)$"]}]
    for name, (command, action) in template_options().items():
        text = (action.help or "").replace("%%", "%")
        if action.nargs == 0:  # a switch: what giving it true does
            text = f"{str(action.const).lower()}: {text}"
        elif action.default not in (None, []) and "(default" not in text:
            text += f" (default: {action.default})"
        param = {"name": name, "label": name.replace("_", " ").capitalize(),
                 "helpText": f"{command}: {text}" if command else text,
                 "isOptional": not (action.required and not command)}
        regex = "^gs://.+" if name in LOCATIONS else _regex(action)
        if regex:
            param["regexes"] = [regex]
        parameters.append(param)
    return {"name": "bertbeam", "description": DESCRIPTION, "parameters": parameters}


def _regex(action: argparse.Action) -> str | None:
    if action.nargs == 0:
        return "^(true|false)$"
    if action.choices:
        return "^(" + "|".join(re.escape(str(c)) for c in action.choices) + ")$"
    return {options.positive_int: "^[1-9][0-9]*$", options.streams: "^([1-9][0-9]*|auto)$",
            options.row_count: "^[0-9]+$", int: "^-?[0-9]+$",
            options.fraction: r"^(0(\.[0-9]+)?|1(\.0*)?|\.[0-9]+)$",
            float: r"^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$"}.get(action.type)


def render_metadata() -> str:
    """:func:`metadata` as the file holds it: one parameter a line."""
    meta = metadata()
    params = ",\n".join(f"    {json.dumps(p, ensure_ascii=False)}" for p in meta["parameters"])
    return (f'{{\n  "name": {json.dumps(meta["name"])},\n'
            f'  "description": {json.dumps(meta["description"], ensure_ascii=False)},\n'
            f'  "parameters": [\n{params}\n  ]\n}}\n')


def write_metadata(path: Path = METADATA) -> None:
    path.write_text(render_metadata())


def main(argv: list[str] | None = None) -> int:
    try:
        args = flex_argv(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"bertbeam: error: {exc}", file=sys.stderr)
        return 2
    return bertbeam_main(args)


if __name__ == "__main__":
    sys.exit(main())
