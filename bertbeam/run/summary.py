"""The run summary (``_SUMMARY.json``): counts from the input footers, the written files and
the counters, built after the pipeline's outputs are committed (on the launcher, or in the
pipeline's last stage with ``--no-wait``), with the run's metadata (:mod:`bertbeam.run.runinfo`)."""

from __future__ import annotations

import json

from bertbeam.beam.incremental import count_computed
from bertbeam.beam.reading import count_input_rows
from bertbeam.beam.writing import count_rows, read_table
from bertbeam.core import metrics
from bertbeam.filesystems import url_to_fs, write_json_atomically

LABEL_TASKS = ("classify", "zero-shot")
SUMMARY_FILE = "_SUMMARY.json"
STREAM_FILE = "_STREAM.json"
"""A streaming run's job, written at launch (task, model, input, windows): what a report of
its windows reads while it runs, before its ``_SUMMARY.json`` exists."""


def build_summary(
    counters: dict[str, int],
    *,
    input_pattern: str,
    output_dir: str,
    wall_seconds: float,
    model: str,
    task: str,
    run_id: str | None = None,
    metadata: dict | None = None,
    read: int | None = None,
    max_dead_letter_fraction: float | None = None,
    max_dead_letters: int | None = None,
) -> dict:
    """The run summary: ``read`` from the input files' footers, ``written`` and
    ``dead_lettered`` from the finalized output files, ``computed`` from their ``run_id``
    column (``carried_forward`` is the rest), tokens and windows from ``counters`` (``None``
    where a counter is unknown), then ``metadata``. ``read`` is the footers' count when the
    launcher has taken it already (for the progress total), else it is counted here.
    ``dead_letter_fraction`` is dead_lettered / read and ``verdict`` says whether the run
    stayed within ``max_dead_letter_fraction`` and ``max_dead_letters`` (``"passed"`` or
    ``"too_many_dead_letters"``; :func:`verdict_line` is the one line for a failed one).

    The accounting invariant: read = computed + carried_forward + dead_lettered.
    """
    if read is None:
        read = count_input_rows(input_pattern)
    written = count_rows(output_dir, "results")
    dead = count_rows(output_dir, "dead_letter")
    computed = count_computed(output_dir, run_id) if run_id else written
    real, padded = counters.get(metrics.REAL_TOKENS), counters.get(metrics.PADDED_TOKENS)
    summary = {
        "task": task,
        "model": model,
        "read": read,
        "written": written,
        "computed": computed,
        "carried_forward": written - computed,
        "dead_lettered": dead,
        "accounted": read == computed + (written - computed) + dead,
        "windows": counters.get(metrics.WINDOWS),
        "chunked_documents": counters.get(metrics.CHUNKED_DOCS),
        "truncated_documents": counters.get(metrics.TRUNCATED_DOCS),
        "batches": counters.get(metrics.BATCHES),
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_efficiency": round(real / padded, 4) if padded else None,
        "oom_batch_splits": counters.get(metrics.OOM_SPLITS),
        "wall_seconds": round(wall_seconds, 3),
        "docs_per_second": round(written / wall_seconds, 3) if wall_seconds > 0 else None,
        "tokens_per_second": (round(real / wall_seconds, 1)
                              if wall_seconds > 0 and real is not None else None),
    }
    fraction = dead / read if read else 0.0
    over = ((max_dead_letter_fraction is not None and fraction > max_dead_letter_fraction)
            or (max_dead_letters is not None and dead > max_dead_letters))
    summary.update({
        "dead_letter_fraction": round(fraction, 6),
        "max_dead_letter_fraction": max_dead_letter_fraction,
        "max_dead_letters": max_dead_letters,
        "verdict": "too_many_dead_letters" if over else "passed",
    })
    if dead:
        reasons = read_table(output_dir, "dead_letter", ["reason"]).column("reason").to_pylist()
        summary["dead_letter_reasons"] = {r: reasons.count(r) for r in sorted(set(reasons))}
    if written and task in LABEL_TASKS:
        labels = read_table(output_dir, "results", ["label"]).column("label").value_counts()
        summary["label_distribution"] = {
            v["values"]: v["counts"] for v in sorted(labels.to_pylist(), key=lambda v: -v["counts"])}
    summary.update(metadata or {})
    return summary


def verdict_line(summary: dict) -> str | None:
    """The one line a run over its dead-letter limits ends with (the top reasons named), or
    ``None`` for a run within them."""
    if summary.get("verdict") != "too_many_dead_letters":
        return None
    dead, read = summary["dead_lettered"], summary["read"]
    limits = []
    if summary.get("max_dead_letter_fraction") is not None and \
            summary["dead_letter_fraction"] > summary["max_dead_letter_fraction"]:
        limits.append(f"--max-dead-letter-fraction {summary['max_dead_letter_fraction']:g}")
    if summary.get("max_dead_letters") is not None and dead > summary["max_dead_letters"]:
        limits.append(f"--max-dead-letters {summary['max_dead_letters']}")
    reasons = sorted((summary.get("dead_letter_reasons") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    top = ", ".join(f"{reason} {count}" for reason, count in reasons[:3])
    return (f"{dead} of {read} rows dead-lettered ({100 * summary['dead_letter_fraction']:.1f}%), "
            f"over {' and '.join(limits)}; top reasons: {top or 'unknown'}; every row is "
            f"accounted for in {summary['output'].rstrip('/')}/dead_letter-*.parquet.")


def write_summary(output_dir: str, summary: dict) -> str:
    """Writes ``_SUMMARY.json`` into ``output_dir`` atomically; it is written last, after the
    results, so its presence means the run finished."""
    return write_json_atomically(output_dir, SUMMARY_FILE, summary)


def read_summary(output_dir: str) -> dict:
    """The ``_SUMMARY.json`` of ``output_dir``."""
    fs, root = url_to_fs(output_dir)
    with fs.open(f"{root.rstrip('/')}/{SUMMARY_FILE}", "r") as f:
        return json.load(f)


def summary_line(summary: dict) -> str:
    eff = summary["padding_efficiency"]
    carried = summary.get("carried_forward")
    written = (f"{summary['written']} written ({summary['computed']} computed, {carried} carried "
               f"forward)" if carried else f"{summary['written']} written")
    return (
        f"bertbeam {summary['task']}: {written}, {summary['dead_lettered']} "
        f"dead-lettered of {summary['read']} read in {summary['wall_seconds']:.1f} s "
        f"({summary['docs_per_second'] or 0:.1f} docs/s, {summary['tokens_per_second'] or 0:.0f} "
        f"tokens/s, padding efficiency {eff if eff is not None else 'n/a'})"
    )
