"""bertbeam's flags as Beam pipeline options, and the parser a command reads them with.

Each group of flags is a ``PipelineOptions`` subclass: :class:`JobOptions` (every task job),
:class:`EmbedOptions`, :class:`LabelOptions` (``--task`` and the options the tasks declare,
:func:`bertbeam.core.task.task_options`) and :class:`CheckGpuOptions`. So a job's pipeline
options hold ``--task``, ``--model``, ``--token-budget`` ... beside Beam's own (Dataflow shows
them with the job), and the Flex Template's parameters are these classes' options
(``pipelines/flex_template.py`` writes ``docker/flex-template-metadata.json`` from them)::

    options = PipelineOptions(["--model", "my-model", "--runner", "DataflowRunner"])
    options.view_as(JobOptions).model          # 'my-model'

A command reads its argv with one parser, :class:`CommandParser`, that holds Beam's flags and
its own: an unknown flag is an error with the nearest flag of either kind, a bad value is one
line (exit status 2), ``--help`` lists bertbeam's flags, each default once.

Importing this module registers the classes with Beam: every ``get_all_options()`` in the
process then knows their flags. ``import bertbeam`` does not import it; the commands do.
"""

from __future__ import annotations

import argparse
import difflib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, get_args

from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.beam.vectordb import add_sink_args
from bertbeam.config import EMBEDDED_MODEL, BatchSpec
from bertbeam.core.task import TaskOption, task_options
from bertbeam.run.control import LOG_LEVELS, MAX_DEAD_LETTER_FRACTION
from bertbeam.tasks import TASKS
from bertbeam.tasks.embed import ChunkPooling, Pooling

LABEL_TASKS = tuple(name for name in TASKS if name != "embed")
BEAM_EPILOG = ("Other flags are Beam pipeline options (--runner, --project, --region, "
               "--direct_num_workers, ...).")


class UsageError(ValueError):
    """A command line bertbeam cannot run: a bad flag value, a missing or unknown flag."""


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after each flag's help, once: not where there is no default,
    not after a switch (its help says what it does), nor where the help names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.default == [] or action.nargs == 0
                or "(default" in text):
            return text
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """The parser of one command. It takes no abbreviations (a typo must not silently mean
    another flag), and a mistake raises :class:`UsageError` (one line) instead of printing
    the usage and exiting. A flag declared twice means the later declaration (a command's
    own ``--labels`` over Beam's)."""

    def __init__(self, prog: str, description: str, *, epilog: str | None = BEAM_EPILOG,
                 parents: Sequence[argparse.ArgumentParser] = ()):
        super().__init__(prog=prog, description=description, epilog=epilog, parents=parents,
                         allow_abbrev=False, formatter_class=_DefaultsHelpFormatter,
                         conflict_handler="resolve")

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _on_command_line(parser: Any) -> bool:
    """Flags are required on a command's own parser only: Beam reads every pipeline's options
    with a parser of all the PipelineOptions classes (``get_all_options``), where a required
    flag would fail pipelines that have nothing to do with bertbeam."""
    return isinstance(parser, CommandParser)


def positive_int(value: str) -> int:
    """An argparse type: a positive integer (``0`` is refused, not taken for a default)."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def streams(value: str) -> int | str:
    """``--cpu-streams``: a positive integer or ``auto``."""
    if value == "auto":
        return value
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {value!r}") from None


def fraction(value: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value!r}")
    return number


def row_count(value: str) -> int:
    """An argparse type: a count of rows, 0 or more."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a count of rows (0 or more), got {value!r}")
    return number


class JobOptions(PipelineOptions):
    """The options of every task job (``bertbeam embed`` and ``bertbeam label``): input and
    output, the model and how it runs, and how the job runs (``--previous``, ``--no-wait`` ...)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        required = _on_command_line(parser)
        g = parser.add_argument_group("bertbeam job options (JobOptions, Beam pipeline options)")
        g.add_argument("--input", required=required,
                       help="Parquet glob: local, gs:// or any fsspec URL")
        g.add_argument("--output", required=required,
                       help="output directory (local, gs://, fsspec URL)")
        g.add_argument("--model", default=EMBEDDED_MODEL,
                       help=f"model directory or URI (default: {EMBEDDED_MODEL})")
        g.add_argument("--id-column", default="id", help="input column with the document id")
        g.add_argument("--text-column", default="text", help="input column with the text")
        g.add_argument("--carry-columns", default=None,
                       help="comma-separated input columns (any type) copied unchanged into "
                            "each result row, e.g. title,url,lang")
        g.add_argument("--keep-text", action="store_true",
                       help="copy the text column(s) into the results too")
        g.add_argument("--max-length", type=positive_int, default=None, help="tokens per window")
        g.add_argument("--long-docs", choices=["truncate", "chunk"], default=None,
                       help="long documents: overlapping windows (chunk) or the first (truncate) "
                            "(default: chunk; fill-mask: truncate)")
        g.add_argument("--stride", type=int, default=None, help="tokens shared by adjacent windows")
        g.add_argument("--token-budget", type=positive_int, default=BatchSpec.token_budget,
                       help="padded tokens in flight per worker (batch size x padded length; "
                            "CPU streams share it)")
        g.add_argument("--buffer-size", type=positive_int, default=BatchSpec.buffer_size,
                       help="windows sorted together before batches are cut")
        g.add_argument("--max-batch-size", type=positive_int, default=BatchSpec.max_batch_size,
                       help="windows per batch at most (default: no cap; the token budget decides)")
        g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="auto: a GPU where the worker has one")
        g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                       default="auto", help="auto: bfloat16 on GPUs that have it, float32 otherwise")
        g.add_argument("--quantize", choices=["none", "int8"], default="none",
                       help="int8: dynamic int8 linear layers on CPU")
        g.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                       help="onnx: ONNX Runtime's fused kernels on CPU "
                            "(pip install 'bertbeam[onnx]')")
        g.add_argument("--threads", type=positive_int, default=None,
                       help="torch threads per worker process (default: cores / local workers)")
        g.add_argument("--cpu-streams", type=streams, default="auto",
                       help="CPU batches run at once per worker process, each on its share of "
                            "--threads (default: auto = min(threads, 4))")
        g.add_argument("--model-cache-dir", default=None, help="local cache for remote models")
        g.add_argument("--allow-pickle-weights", action="store_true",
                       help="accept .bin/.pt weights (pickle can run code)")
        g.add_argument("--trust-remote-code", action="store_true",
                       help="run model code shipped with the checkpoint")
        _add_control_args(parser)


def _add_control_args(parser: Any) -> None:
    g = parser.add_argument_group("nightly runs (JobOptions)")
    g.add_argument("--previous", action="append", default=[], metavar="LOCATION",
                   help="output directory of an earlier run of this job (repeatable): rows of "
                        "unchanged documents are carried forward instead of computed again")
    g.add_argument("--no-wait", dest="wait", action="store_false",
                   help="return once the job is submitted: the pipeline writes _SUMMARY.json "
                        "(and the report) itself, after the outputs (Dataflow Flex Templates)")
    g.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write _REPORT.html and its figures")
    g.add_argument("--quiet", action="store_true",
                   help="print the summary line only: no start line, no progress")
    g.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=None,
                   help="level of bertbeam's log messages (default: WARNING, ERROR with --quiet)")
    g.add_argument("--max-dead-letter-fraction", type=fraction, default=MAX_DEAD_LETTER_FRACTION,
                   metavar="F",
                   help="fail the run (exit 4, after writing and accounting for every row) when "
                        "more than this fraction of the rows read is dead-lettered "
                        f"(default: {MAX_DEAD_LETTER_FRACTION}; 1 never fails)")
    g.add_argument("--max-dead-letters", type=row_count, default=None, metavar="N",
                   help="fail the run (exit 4) when more than N rows are dead-lettered "
                        "(default: no limit on the count)")


class EmbedOptions(PipelineOptions):
    """The options of ``bertbeam embed`` besides :class:`JobOptions`: pooling, prompts,
    dimensions, and a vector database to write to."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        g = parser.add_argument_group("embed options (EmbedOptions, Beam pipeline options)")
        g.add_argument("--pooling", choices=get_args(Pooling), default="auto",
                       help="token pooling; auto: the checkpoint's Pooling module, else mean")
        g.add_argument("--normalize", choices=["auto", "yes", "no"], default="auto",
                       help="auto: as the checkpoint says (plain checkpoints are normalized)")
        prompt = g.add_mutually_exclusive_group()
        prompt.add_argument("--prompt-name", default=None,
                            help="one of the checkpoint's prompts (default: its default_prompt_name)")
        prompt.add_argument("--prompt", default=None,
                            help="a prompt text put before every document; '' turns a default "
                                 "prompt off")
        g.add_argument("--truncate-dim", type=positive_int, default=None,
                       help="keep the first N dimensions of each embedding (Matryoshka models)")
        g.add_argument("--chunk-pooling", choices=get_args(ChunkPooling), default="mean",
                       help="how window embeddings of a long document are combined")
        add_sink_args(g)


def options_by_flag() -> dict[str, list[tuple[str, TaskOption]]]:
    """flag -> [(task, its option)] over every labeling task."""
    flags: dict[str, list[tuple[str, TaskOption]]] = defaultdict(list)
    for name in LABEL_TASKS:
        for opt in task_options(TASKS[name]):
            flags[opt.flag].append((name, opt))
    return flags


COMMAND_FLAGS = {
    # dest -> (flag, tasks that take it): flags of the label command, not task options.
    "candidate_labels": ("--labels", ("zero-shot",)),
    "labels_file": ("--labels-file", ("zero-shot",)),
    "question_column": ("--question-column", ("qa",)),
    "context_column": ("--context-column", ("qa",)),
}


class LabelOptions(PipelineOptions):
    """The options of ``bertbeam label`` besides :class:`JobOptions`: ``--task`` and the
    options each task declares (``bertbeam.core.task.option``), with the defaults of each."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        cli = _on_command_line(parser)
        g = parser.add_argument_group("label options (LabelOptions, Beam pipeline options)")
        g.add_argument("--task", required=cli, choices=LABEL_TASKS, default=None,
                       help="what to compute for each document")
        g = parser.add_argument_group(
            "task options (LabelOptions; default: the task's own, shown per task)")
        for flag, owners in options_by_flag().items():
            _, first = owners[0]
            help_text = "; ".join(
                f"{task}: {opt.help}" + ("" if opt.default is None else f" (default: {opt.default})")
                for task, opt in owners).replace("%", "%%")
            # No default: a flag the user did not give is absent, so that a flag given to a
            # task that does not take it is refused, and the task's own default applies.
            if first.kind is bool:
                g.add_argument(flag, dest=first.name, action="store_const", const=True,
                               default=argparse.SUPPRESS if cli else None, help=help_text)
            else:
                g.add_argument(flag, dest=first.name, type=first.kind, choices=first.choices,
                               default=argparse.SUPPRESS if cli else None, help=help_text)
        g = parser.add_argument_group("qa (LabelOptions)")
        g.add_argument("--question-column", default=None, help="input column; default: question")
        g.add_argument("--context-column", default=None, help="input column; default: context")
        g = parser.add_argument_group("zero-shot (LabelOptions)")
        labels = g.add_mutually_exclusive_group()
        # Beam's GoogleCloudOptions owns --labels (a Dataflow job's labels): the zero-shot
        # labels are --candidate-labels among the pipeline's options, and --labels on the
        # command line (label.pipeline_flags hands them on under the other name).
        labels.add_argument(*(("--labels",) if cli else ()), "--candidate-labels",
                            dest="candidate_labels", default=None, metavar="LABELS",
                            help='comma-separated labels, each "label" or "label: description"')
        labels.add_argument("--labels-file", default=None,
                            help='file with one "label" or "label: description" a line')


def seconds(value: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0 or more), got {value!r}")
    return number


class StreamOptions(PipelineOptions):
    """The options of ``bertbeam embed|label --streaming`` (Beam's own ``--streaming`` turns
    it on): windows, the watch, the partial batch's wait and the stop."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        g = parser.add_argument_group(
            "streaming (StreamOptions; with --streaming and --input 'watch:GLOB' or "
            "'pubsub:projects/P/subscriptions/S')")
        g.add_argument("--window-seconds", type=positive_int, default=60,
                       help="fixed windows: results are written in files per window, ids are "
                            "unique per window")
        g.add_argument("--watch-interval", type=seconds, default=2.0,
                       help="seconds between two matches of a watch: glob")
        g.add_argument("--max-wait", type=seconds, default=BatchSpec.max_wait,
                       help="the longest a partial batch waits for more documents, in seconds")
        g.add_argument("--drain-timeout", type=seconds, default=300.0,
                       help="on Ctrl-C, the longest to wait for the files that have landed "
                            "to be written, in seconds")
        g.add_argument("--tombstone-column", default=None,
                       help="an input field that, when true, deletes its id (from --sink, "
                            "written to deleted-* files) instead of computing it")


class CheckGpuOptions(PipelineOptions):
    """The options of ``bertbeam check-gpu``."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        g = parser.add_argument_group("check-gpu options (CheckGpuOptions, Beam pipeline options)")
        g.add_argument("--probes", type=positive_int, default=8,
                       help="probe elements, spread over workers")
        g.add_argument("--allow-cpu", action="store_true",
                       help="report workers without a GPU instead of failing")


BERTBEAM_OPTIONS: tuple[type[PipelineOptions], ...] = (
    JobOptions, EmbedOptions, LabelOptions, StreamOptions, CheckGpuOptions)


def beam_option_classes() -> list[type[PipelineOptions]]:
    """Beam's own options classes (and any other library's), as Beam itself finds them."""
    found = {str(c): c for c in PipelineOptions.__subclasses__() if c not in BERTBEAM_OPTIONS}
    return list(found.values())


class _Unlisted(argparse.ArgumentParser):
    """Beam's flags for a command's parser: accepted, not listed in ``--help`` (they would
    be hundreds of lines; the epilog names a few)."""

    def __init__(self) -> None:
        super().__init__(add_help=False, allow_abbrev=False)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:  # type: ignore[override]
        return super().add_argument(*args, **{**kwargs, "help": argparse.SUPPRESS})


def command_parser(prog: str, description: str,
                   classes: Sequence[type[PipelineOptions]]) -> CommandParser:
    """A command's parser: Beam's options classes and the command's bertbeam ones."""
    beam = _Unlisted()
    for cls in beam_option_classes():
        cls._add_argparse_args(beam)
    parser = CommandParser(prog, description, parents=[beam])
    for cls in classes:
        cls._add_argparse_args(parser)
    return parser


def parse_command(parser: CommandParser, classes: Sequence[type[PipelineOptions]],
                  argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """``argv`` read by ``parser`` (bertbeam's and Beam's flags): bertbeam's options, and the
    flags that are Beam's, in their order.

    Raises:
        UsageError: a bad value, a missing flag, or a flag that is neither bertbeam's nor
            Beam's (with the nearest flag of either kind).
    """
    argv = [str(a) for a in argv]
    _, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [a for a in unknown if a.startswith("-")]
        if not flags:
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
        known = [o for action in parser._actions for o in action.option_strings]
        close = difflib.get_close_matches(flags[0].split("=", 1)[0], known, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise UsageError(f"Unknown option {flags[0]!r}: neither a bertbeam nor a Beam option.{hint}")
    ours = CommandParser(parser.prog, parser.description or "")
    for cls in classes:
        cls._add_argparse_args(ours)
    args, beam_args = ours.parse_known_args(argv)
    return args, beam_args


def option_actions(classes: Iterable[type[PipelineOptions]] = BERTBEAM_OPTIONS
                   ) -> dict[str, argparse.Action]:
    """dest -> its flag's action, over ``classes`` as a command line sees them."""
    parser = CommandParser("bertbeam", "")
    for cls in classes:
        cls._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
