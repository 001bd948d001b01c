"""Beam counter names, and the run summary built from them and from the written files."""

from __future__ import annotations

from apache_beam.metrics import Metrics

NAMESPACE = "bertbeam"

READ = "documents_read"
WRITTEN = "documents_written"
DEAD_LETTERED = "documents_dead_lettered"
WINDOWS = "windows"
CHUNKED_DOCS = "documents_chunked"
TRUNCATED_DOCS = "documents_truncated"
BATCHES = "batches"
REAL_TOKENS = "real_tokens"
PADDED_TOKENS = "padded_tokens"
OOM_SPLITS = "oom_batch_splits"

COUNTERS = (
    READ, WRITTEN, DEAD_LETTERED, WINDOWS, CHUNKED_DOCS, TRUNCATED_DOCS, BATCHES, REAL_TOKENS,
    PADDED_TOKENS, OOM_SPLITS,
)

LABEL_TASKS = ("classify", "zero-shot")

_counters: dict[str, object] = {}


def inc(name: str, n: int = 1) -> None:
    """Adds ``n`` to the bertbeam counter ``name`` (a no-op for zero)."""
    if n:
        counter = _counters.get(name)
        if counter is None:
            counter = _counters[name] = Metrics.counter(NAMESPACE, name)
        counter.inc(int(n))


def query_counters(result: object) -> dict[str, int]:
    """Committed values of every bertbeam counter from a finished ``PipelineResult``."""
    from apache_beam.metrics.metric import MetricsFilter

    values = dict.fromkeys(COUNTERS, 0)
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        values[c.key.metric.name] = values.get(c.key.metric.name, 0) + int(value or 0)
    return values


def build_summary(
    counters: dict[str, int],
    *,
    input_pattern: str,
    output_dir: str,
    wall_seconds: float,
    model: str,
    task: str,
) -> dict:
    """The run summary: ``read`` from the input files' footers, ``written`` and
    ``dead_lettered`` from the finalized output files, tokens and windows from counters."""
    from bertbeam.io import count_input_rows, count_rows, read_table

    read = count_input_rows(input_pattern)
    written = count_rows(output_dir, "results")
    dead = count_rows(output_dir, "dead_letter")
    real, padded = counters[REAL_TOKENS], counters[PADDED_TOKENS]
    summary = {
        "task": task,
        "model": model,
        "read": read,
        "written": written,
        "dead_lettered": dead,
        "accounted": read == written + dead,
        "windows": counters[WINDOWS],
        "chunked_documents": counters[CHUNKED_DOCS],
        "truncated_documents": counters[TRUNCATED_DOCS],
        "batches": counters[BATCHES],
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_efficiency": round(real / padded, 4) if padded else None,
        "oom_batch_splits": counters[OOM_SPLITS],
        "wall_seconds": round(wall_seconds, 3),
        "docs_per_second": round(written / wall_seconds, 3) if wall_seconds > 0 else None,
        "tokens_per_second": round(real / wall_seconds, 1) if wall_seconds > 0 else None,
    }
    if dead:
        reasons = read_table(output_dir, "dead_letter", ["reason"]).column("reason").to_pylist()
        summary["dead_letter_reasons"] = {r: reasons.count(r) for r in sorted(set(reasons))}
    if written and task in LABEL_TASKS:
        labels = read_table(output_dir, "results", ["label"]).column("label").value_counts()
        summary["label_distribution"] = {
            v["values"]: v["counts"] for v in sorted(labels.to_pylist(), key=lambda v: -v["counts"])}
    return summary


def write_summary(output_dir: str, summary: dict) -> str:
    """Writes ``_SUMMARY.json`` into ``output_dir``; it is written last, after the results."""
    import json

    import fsspec

    fs, root = fsspec.core.url_to_fs(output_dir)
    path = f"{root.rstrip('/')}/_SUMMARY.json"
    with fs.open(path, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=False)
    return fs.unstrip_protocol(path)


def summary_line(summary: dict) -> str:
    eff = summary["padding_efficiency"]
    return (
        f"bertbeam {summary['task']}: {summary['written']} written, {summary['dead_lettered']} "
        f"dead-lettered of {summary['read']} read in {summary['wall_seconds']:.1f} s "
        f"({summary['docs_per_second'] or 0:.1f} docs/s, {summary['tokens_per_second'] or 0:.0f} "
        f"tokens/s, padding efficiency {eff if eff is not None else 'n/a'})"
    )
