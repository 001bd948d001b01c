"""The run report: ``OUTPUT/_REPORT.html``, one self-contained page (figures embedded as PNG
data URIs), and each figure as ``OUTPUT/_REPORT-<panel>.png``.

The header answers "how did it run": counts (read, computed, carried forward, removed,
dead-lettered, the verdict), speed (documents and tokens per second, padding efficiency),
where it ran (backend, device, dtype, quantization) and the versions. The first panel answers
the nightly question, "what changed since the previous run": documents added, changed,
removed and unchanged (with example ids) and, for the documents in both runs that this run
computed again, the drift (labels that changed, the cosine similarity of old and new
embeddings). Then: label distribution and its change (labels whose share moved more than a
threshold are flagged), scores, tokens and windows per document, dead-letter reasons,
throughput over the run; for embed, norm and dimension checks and a few documents with their
3 nearest neighbours in a sample. Data that isn't there (or a single bar) gets a one-line
fact under the header instead of a panel.

Example::

    write_report("out/2026-11-28", previous="out/2026-11-27")
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertbeam.beam.window_files import window_bounds, window_files
from bertbeam.config import BatchSpec
from bertbeam.core.deadletter import REASONS, Reason
from bertbeam.filesystems import expand_glob, url_to_fs, write_file_safely
from bertbeam.run.summary import STREAM_FILE, SUMMARY_FILE, read_summary

_LOG = logging.getLogger("bertbeam")

REPORT_FILE = "_REPORT.html"
MOVE_THRESHOLD = 0.05
"""A label is flagged when its share of the results moved more than this since the previous
run (0.05: five percentage points)."""
SAMPLE_ROWS = 5000
MAX_SCORES = 200_000
"""Scores plotted at most; a larger run's are sampled uniformly."""
NEIGHBOUR_DOCS = 4
LABEL_TASKS = ("classify", "zero-shot")

PANELS = {
    "since_previous": "Since the previous run",
    "labels": "Label distribution",
    "scores": "Scores",
    "tokens": "Tokens per document",
    "windows": "Windows per document",
    "dead_letter": "Dead-letter reasons",
    "per_window": "Rows per window",
    "throughput": "Throughput over the run",
    "norms": "Embedding norms and dimension",
    "neighbours": "Nearest neighbours (sample)",
}
_BAR, _FLAG, _PREVIOUS = "#5b6f8a", "#c0392b", "#b8c4d6"
EXAMPLE_IDS = 5
CHANGE_KINDS = ("added", "changed", "removed", "unchanged")


def panels_for(task: str) -> list[str]:
    """The panels a report of ``task`` may show, in order (one whose data isn't there
    becomes a one-line fact)."""
    first = ["labels"] if task in LABEL_TASKS else []
    scores = [] if task == "embed" else ["scores"]
    last = ["norms", "neighbours"] if task == "embed" else []
    return ["since_previous", *first, *scores, "tokens", "windows", "dead_letter", "throughput",
            *last]


@dataclass
class Panel:
    """A panel: a figure and/or a table, with a note; or, with ``fact`` set, only that line
    (the data isn't there, or is one number), shown under the header instead of a panel."""

    key: str
    png: bytes | None = None
    note: str = ""
    table: list[list[str]] | None = None
    header: list[str] | None = None
    fact: str | None = None

    @property
    def title(self) -> str:
        return PANELS[self.key]


def write_report(output_dir: str, previous: str | None = None,
                 threshold: float = MOVE_THRESHOLD,
                 windows: tuple[dt.datetime | None, dt.datetime | None] | None = None) -> str:
    """Writes ``_REPORT.html`` and the PNGs of ``output_dir`` (a finished run: it reads its
    ``_SUMMARY.json`` and results); ``previous`` is an earlier run's output directory to
    compare labels with. Returns the report's URL.

    A streaming run's output (files per window) is reported over its windows, all of them
    or those within ``windows`` = (start, end), while it runs or after: the counts, labels
    and dead-letter reasons of those windows' files, and the rows written per window."""
    import matplotlib  # the report's plots only

    matplotlib.use("Agg")

    source: Source = output_dir
    if is_streamed(output_dir):
        summary, source = streaming_summary(output_dir, *(windows or (None, None)))
    elif windows is not None:
        raise ValueError("--windows reports a streaming run's windows; this output holds a "
                         "batch run's results.")
    else:
        summary = read_summary(output_dir)
    before = _previous_summary(previous)
    builders = {
        "since_previous": lambda: _since_previous(output_dir, previous, summary),
        "labels": lambda: _labels(summary, before, threshold),
        "scores": lambda: _scores(source),
        "tokens": lambda: _tokens(source, summary),
        "windows": lambda: _windows(source),
        "dead_letter": lambda: _dead_letter(summary),
        "throughput": lambda: _throughput(summary),
        "per_window": lambda: _per_window(summary),
        "norms": lambda: _norms(source, summary),
        "neighbours": lambda: _neighbours(source, summary),
    }
    keys = panels_for(summary["task"])
    if summary.get("mode") == "streaming":
        keys = [("per_window" if k == "throughput" else k) for k in keys if k != "since_previous"]
    panels = [builders[key]() for key in keys]
    fs, root = url_to_fs(output_dir)
    root = root.rstrip("/")
    # Through a temporary file and a rename, refusing a link planted in the output (issue 27).
    for panel in panels:
        if panel.png is not None and panel.fact is None:
            write_file_safely(fs.unstrip_protocol(f"{root}/_REPORT-{panel.key}.png"), panel.png)
    write_file_safely(fs.unstrip_protocol(f"{root}/{REPORT_FILE}"), render(summary, panels, previous))
    return fs.unstrip_protocol(f"{root}/{REPORT_FILE}")


def _previous_summary(previous: str | None) -> dict | None:
    if previous is None:
        return None

    try:
        return read_summary(previous)
    except (OSError, ValueError) as exc:
        _LOG.warning("The report compares with nothing: no summary in %s (%s).", previous, exc)
        return None


# -- data ---------------------------------------------------------------------------------


STREAMED = ("results", "dead_letter", "deleted")
"""The files per window a streaming run writes."""


def is_streamed(output_dir: str) -> bool:
    """Whether ``output_dir`` holds a streaming run's output (its job file or files per
    window)."""
    fs, root = url_to_fs(output_dir)
    return fs.exists(f"{root.rstrip('/')}/{STREAM_FILE}") or any(
        window_files(output_dir, prefix) for prefix in STREAMED)


def _read_json(output_dir: str, name: str) -> dict | None:
    fs, root = url_to_fs(output_dir)
    path = f"{root.rstrip('/')}/{name}"
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.load(f)


def streaming_summary(output_dir: str, start: dt.datetime | None = None,
                      end: dt.datetime | None = None) -> tuple[dict, list[str]]:
    """(the summary of a streaming run's windows within ``start``..``end``, their results
    files): the job from ``_SUMMARY.json`` (a stopped run) or ``_STREAM.json`` (a running
    one); the counts, labels, dead-letter reasons and rows per window from the windows'
    files."""
    job = _read_json(output_dir, SUMMARY_FILE) or _read_json(output_dir, STREAM_FILE)
    if job is None:
        raise ValueError(f"{output_dir} has files per window but no {STREAM_FILE} or "
                         f"{SUMMARY_FILE}: not a bertbeam streaming run's output.")
    files = {prefix: window_files(output_dir, prefix, start=start, end=end)
             for prefix in STREAMED}
    per_window: dict[str, list[int]] = {}
    counts = dict.fromkeys(STREAMED, 0)
    labels: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for prefix, urls in files.items():
        for url in urls:
            fs, path = url_to_fs(url)
            with fs.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                rows = parquet.metadata.num_rows
                column = {"results": "label", "dead_letter": "reason"}.get(prefix)
                values = (parquet.read(columns=[column]).column(0).to_pylist()
                          if column in parquet.schema_arrow.names else [])
            counts[prefix] += rows
            tally = labels if prefix == "results" else reasons
            for value in values:
                if isinstance(value, str):
                    tally[value] = tally.get(value, 0) + 1
            start_of = window_bounds(url)[0].strftime("%Y-%m-%dT%H:%M:%SZ")
            per_window.setdefault(start_of, [0, 0, 0])[STREAMED.index(prefix)] += rows
    whole = start is None and end is None
    summary = {
        **{k: job.get(k) for k in ("task", "model", "input", "options", "window_seconds",
                                   "started_at", "model_fingerprint", "backend")
           if job.get(k) is not None},
        "mode": "streaming",
        "output": output_dir,
        "window_range": [None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")
                         for t in (start, end)],
        "windows": len(per_window),
        "per_window": [[k, *v] for k, v in sorted(per_window.items())],
        "read": sum(counts.values()),
        "written": counts["results"],
        "computed": counts["results"],
        "carried_forward": 0,
        "dead_lettered": counts["dead_letter"],
        "deleted": counts["deleted"],
        "dead_letter_reasons": reasons,
        "label_distribution": labels,
        "running": _read_json(output_dir, SUMMARY_FILE) is None,
    }
    if whole and job.get("latency_seconds"):
        summary["latency_seconds"] = job["latency_seconds"]
    return summary, files["results"]


Source = str | Sequence[str]
"""What a panel reads results from: a batch run's output directory (its ``results-*-of-*``
files) or the list of result files themselves (a streaming run's windows)."""


def _result_files(source: Source) -> list[str]:
    if not isinstance(source, str):
        return list(source)
    return expand_glob(f"{source.rstrip('/')}/results-*-of-*.parquet")


def _row_groups(output_dir: Source, wanted: list[str]) -> Iterator[pa.Table]:
    """The ``wanted`` columns (or nested leaves, such as ``entities.list.element.score``)
    that the results have, a row group at a time; nothing when they have none of them."""
    for url in _result_files(output_dir):
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            paths = {parquet.schema.column(i).path for i in range(len(parquet.schema))}
            names = [c for c in wanted
                     if c in parquet.schema_arrow.names or c in paths]
            if not names:
                return
            for group in range(parquet.num_row_groups):
                yield parquet.read_row_group(group, columns=names)


def _columns(output_dir: Source, wanted: list[str], limit: int | None = None) -> pa.Table | None:
    """The ``wanted`` columns (those the task writes), all rows or the first ``limit``;
    ``None`` when the results have none of them."""
    tables, rows = [], 0
    for table in _row_groups(output_dir, wanted):
        tables.append(table)
        rows += table.num_rows
        if limit is not None and rows >= limit:
            return pa.concat_tables(tables).slice(0, limit)
    return pa.concat_tables(tables) if tables else None


# -- figures ------------------------------------------------------------------------------


def _figure(key: str, height: float = 3.4):
    import matplotlib.pyplot as plt  # the report's plots only

    fig, ax = plt.subplots(figsize=(6.4, height), dpi=100)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt  # the report's plots only

    buffer = io.BytesIO()
    fig.tight_layout(pad=1.6)
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _message(key: str, text: str) -> Panel:
    """No panel: one line under the header says why (or what the one number is)."""
    return Panel(key, fact=text)


def _histogram(key: str, values: np.ndarray, xlabel: str, note: str, *, integer: bool = False,
               log: bool = False) -> Panel:
    """``log``: a logarithmic x axis with bins of equal width on it (for counts that span
    orders of magnitude, such as tokens per document). All values equal: a fact, not a
    one-bar figure."""
    if len(values) == 0 or float(np.ptp(values)) <= 1e-6 * max(1.0, abs(float(values.max()))):
        value = f"{float(values[0]):.4g}" if len(values) else "none"
        return Panel(key, fact=f"{PANELS[key]}: all {len(values)} are {value}. {note}".strip())
    fig, ax = _figure(key)
    span = None
    if log:
        bins = log_bins(values)
        ax.set_xscale("log")
    elif integer:
        top = int(values.max()) if len(values) else 1
        bins = np.arange(0.5, top + 1.5) if top <= 60 else 40
    else:
        bins = 40
        if len(values) and np.ptp(values) < 1e-4 * max(1.0, abs(float(values.max()))):
            middle = float(values.mean())  # e.g. normalized embeddings: every norm is 1
            span = (middle - 0.01 * max(1.0, abs(middle)), middle + 0.01 * max(1.0, abs(middle)))
    ax.hist(values, bins=bins, range=span, color=_BAR)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("documents")
    return Panel(key, _png(fig), note)


def log_bins(values: np.ndarray, bins: int = 40) -> np.ndarray:
    """Bin edges evenly spaced on a log axis from the smallest to the largest positive value
    (one bin around the value when all are equal)."""
    positive = values[values > 0] if len(values) else values
    if not len(positive):
        return np.array([0.5, 2.0])
    low, high = float(positive.min()), float(positive.max())
    if high <= low:
        return np.array([low / 1.25, low * 1.25])
    return np.geomspace(low, high, bins + 1)


def _labels(summary: dict, before: dict | None, threshold: float) -> Panel:
    now = summary.get("label_distribution") or {}
    if not now:
        return _message("labels", "No labelled rows in this run.")
    then = (before or {}).get("label_distribution") or {}
    labels = sorted(set(now) | set(then), key=lambda k: -now.get(k, 0))
    if len(labels) == 1:
        return _message("labels", f"Every labelled row is {labels[0]!r} ({now[labels[0]]} rows)"
                                  f"{', as in the previous run' if then else ''}.")
    share_now = np.array([now.get(k, 0) for k in labels], float) / max(sum(now.values()), 1)
    share_then = np.array([then.get(k, 0) for k in labels], float) / max(sum(then.values()), 1)
    moved = np.abs(share_now - share_then) > threshold if then else np.zeros(len(labels), bool)
    fig, ax = _figure("labels", height=max(2.4, 0.5 + 0.42 * len(labels)))
    y = np.arange(len(labels))
    if then:
        ax.barh(y + 0.2, share_then, height=0.4, color=_PREVIOUS, label="previous run")
    ax.barh(y - (0.2 if then else 0), share_now, height=0.4 if then else 0.7,
            color=[_FLAG if m else _BAR for m in moved], label="this run")
    ax.set_yticks(y, [f"{k} (moved {100 * (n - t):+.1f} pts)" if m else k
                      for k, n, t, m in zip(labels, share_now, share_then, moved, strict=True)])
    ax.invert_yaxis()
    ax.set_xlabel("share of results")
    if then:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=8)
    flagged = [k for k, m in zip(labels, moved, strict=True) if m]
    note = (f"Flagged (moved more than {100 * threshold:.0f} percentage points): "
            f"{', '.join(flagged)}." if flagged else
            ("No label moved more than " f"{100 * threshold:.0f} percentage points."
             if then else "No previous run to compare with."))
    return Panel("labels", _png(fig), note)


def _stamps(output_dir: str) -> dict[str, tuple[str | None, str | None]]:
    """id -> (text fingerprint, run id) of a run's results (``None`` where a column is
    missing: results of bertbeam 0.1)."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for table in _row_groups(output_dir, ["id", "text_fingerprint", "run_id"]):
        ids = table.column("id").to_pylist()
        fps = (table.column("text_fingerprint").to_pylist() if "text_fingerprint" in table.column_names
               else [None] * len(ids))
        runs = table.column("run_id").to_pylist() if "run_id" in table.column_names else [None] * len(ids)
        out.update(zip(ids, zip(fps, runs, strict=True), strict=True))
    return out


def compare_runs(output_dir: str, previous: str) -> dict[str, list[str]]:
    """Ids ``added`` (not in the previous results), ``changed`` (another text fingerprint),
    ``unchanged``, ``removed`` (previous ids neither in these results nor in this run's dead
    letter), and ``recomputed``: ids in both runs whose row this run computed again (a changed
    text, or a new model or options), the overlaps whose drift the report shows."""
    now, then = _stamps(output_dir), _stamps(previous)
    out: dict[str, list[str]] = {k: [] for k in (*CHANGE_KINDS, "recomputed")}
    for doc_id, (fp, run) in now.items():
        if doc_id not in then:
            out["added"].append(doc_id)
            continue
        out["unchanged" if fp == then[doc_id][0] else "changed"].append(doc_id)
        if run != then[doc_id][1]:
            out["recomputed"].append(doc_id)
    dead = set()
    for table in _row_groups_of(output_dir, "dead_letter", ["id"]):
        dead.update(table.column("id").to_pylist())
    out["removed"] = sorted(i for i in then if i not in now and i not in dead)
    return {k: sorted(v) for k, v in out.items()}


def _row_groups_of(output_dir: str, prefix: str, wanted: list[str]) -> Iterator[pa.Table]:
    for url in expand_glob(f"{output_dir.rstrip('/')}/{prefix}-*-of-*.parquet"):
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            yield pq.read_table(f, columns=wanted)


def _rows_of(output_dir: str, ids: set[str], column: str) -> dict[str, object]:
    """id -> ``column`` of the results rows whose id is in ``ids`` (a row group at a time)."""
    found: dict[str, object] = {}
    wanted = pa.array(sorted(ids), pa.string())
    for table in _row_groups(output_dir, ["id", column]):
        if column not in table.column_names:
            return found
        table = table.filter(pc.is_in(table.column("id"), value_set=wanted))
        if column == "embedding" and table.num_rows:
            vectors = _vectors(table.column(column))
            found.update(zip(table.column("id").to_pylist(), vectors, strict=True))
        else:
            found.update(zip(table.column("id").to_pylist(), table.column(column).to_pylist(),
                             strict=True))
    return found


def _since_previous(output_dir: str, previous: str | None, summary: dict) -> Panel:
    """Added / changed / removed / unchanged documents with example ids, and the drift of the
    documents both runs hold that this run computed again."""
    if previous is None:
        return _message("since_previous", "No previous run to compare with (--previous).")
    try:
        found = compare_runs(output_dir, previous)
    except (OSError, ValueError) as exc:
        return _message("since_previous", f"The previous run {previous} cannot be read: {exc}")
    counts = [len(found[k]) for k in CHANGE_KINDS]
    fig, ax = _figure("since_previous", height=2.2)
    y = np.arange(len(CHANGE_KINDS))
    ax.barh(y, counts, color=[_BAR, _FLAG, "#7f8c8d", _PREVIOUS])
    ax.set_yticks(y, [f"{k} ({n:,})" for k, n in zip(CHANGE_KINDS, counts, strict=True)])
    ax.invert_yaxis()
    ax.set_xlabel("documents")
    rows = [[kind, f"{len(found[kind]):,}", ", ".join(found[kind][:EXAMPLE_IDS])
             + (" …" if len(found[kind]) > EXAMPLE_IDS else "")] for kind in CHANGE_KINDS]
    drift = _drift(output_dir, previous, found["recomputed"], summary["task"])
    rows.append(["recomputed (both runs)", f"{len(found['recomputed']):,}", drift])
    return Panel("since_previous", _png(fig), note=(
        f"Compared with {previous}: ids by text fingerprint; removed = ids of the previous "
        "results in neither these results nor this run's dead letter."), table=rows,
        header=["documents", "count", "examples / drift"])


def _drift(output_dir: str, previous: str, ids: list[str], task: str) -> str:
    """One line: how the rows of documents in both runs that this run computed again moved
    (labels that changed; cosine similarity of the old and new embeddings)."""
    if not ids:
        return "none: every document in both runs was carried forward"
    sample = set(ids[:SAMPLE_ROWS])
    if task in LABEL_TASKS:
        now, then = _rows_of(output_dir, sample, "label"), _rows_of(previous, sample, "label")
        both = [i for i in sample if i in now and i in then]
        moved = [(then[i], now[i]) for i in both if then[i] != now[i]]
        top = sorted({m: moved.count(m) for m in set(moved)}.items(), key=lambda kv: -kv[1])[:3]
        moves = ", ".join(f"{a} → {b} ×{n}" for (a, b), n in top)
        return (f"label changed for {len(moved)} of {len(both)}" + (f" ({moves})" if moves else ""))
    if task == "embed":
        now, then = _rows_of(output_dir, sample, "embedding"), _rows_of(previous, sample, "embedding")
        both = [i for i in sorted(sample) if i in now and i in then
                and len(now[i]) == len(then[i])]
        if not both:
            return "no embeddings of the same dimension in both runs"
        a = np.stack([now[i] for i in both])
        b = np.stack([then[i] for i in both])
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        worst = both[int(np.argmin(cos))]
        return (f"cosine similarity of old and new embeddings: mean {cos.mean():.3f}, min "
                f"{cos.min():.3f} ({worst}) over {len(both)}")
    return f"{len(ids)} recomputed"


def _scores(output_dir: Source) -> Panel:
    """Every score of the run (a label's, an entity's, a prediction's), read a row group at a
    time and only the score leaf of nested columns; above ``MAX_SCORES`` a uniform sample of
    them is plotted, so the launcher's memory does not grow with the corpus."""
    wanted = ["score", "entities.list.element.score", "predictions.list.element.score"]
    rng = np.random.default_rng(0)
    kept, keys = np.zeros(0, np.float32), np.zeros(0)
    total = 0
    for table in _row_groups(output_dir, wanted):
        column = table.column(0)
        if pa.types.is_list(column.type):  # ner entities, fill-mask predictions
            column = pc.struct_field(pc.list_flatten(column), "score")
        values = column.to_numpy(zero_copy_only=False).astype(np.float32)
        total += len(values)
        kept, keys = np.concatenate([kept, values]), np.concatenate([keys, rng.random(len(values))])
        if len(kept) > MAX_SCORES:  # the MAX_SCORES smallest random keys: a uniform sample
            keep = np.argpartition(keys, MAX_SCORES)[:MAX_SCORES]
            kept, keys = kept[keep], keys[keep]
    if total == 0:
        return _message("scores", "No scores in these results.")
    sample = f" (plotted: a uniform sample of {len(kept):,})" if len(kept) < total else ""
    return _histogram("scores", kept, "score",
                      f"{total} scores, median {np.median(kept):.3f}{sample}.")


def _tokens(output_dir: Source, summary: dict) -> Panel:
    table = _columns(output_dir, ["n_tokens"])
    if table is None:
        real, windows = summary.get("real_tokens"), summary.get("windows")
        text = (f"This task's results have no n_tokens column; the run read {real} tokens in "
                f"{windows} windows ({real / windows:.1f} per window)." if real and windows else
                "This task's results have no n_tokens column.")
        return _message("tokens", text)
    values = table.column(0).to_numpy(zero_copy_only=False)
    return _histogram("tokens", values, "tokens per document (all windows, log scale)",
                      f"Median {np.median(values):.0f}, max {values.max()} tokens." if len(values) else "",
                      log=True)


def _windows(output_dir: Source) -> Panel:
    table = _columns(output_dir, ["n_chunks"])
    if table is None:
        return _message("windows", "This task reads the first window of each document only.")
    values = table.column(0).to_numpy(zero_copy_only=False)
    chunked = int((values > 1).sum())
    if chunked == 0:
        return _message("windows", f"Every one of the {len(values)} documents fit in one window.")
    return _histogram("windows", values, "windows per document",
                      f"{chunked} of {len(values)} documents had more than one window.",
                      integer=True)


def _dead_letter(summary: dict) -> Panel:
    reasons = summary.get("dead_letter_reasons") or {}
    if not reasons:
        return _message("dead_letter", "No document was dead-lettered.")
    names = sorted(reasons, key=lambda r: -reasons[r])
    stages = {r.value: stage.value for r, (stage, _) in REASONS.items() if isinstance(r, Reason)}
    if len(names) == 1:
        return _message("dead_letter", f"{reasons[names[0]]} of {summary['read']} read were "
                                       f"dead-lettered, all {names[0]} ({stages.get(names[0], '?')} "
                                       "stage).")
    fig, ax = _figure("dead_letter", height=max(2.0, 0.5 + 0.4 * len(names)))
    ax.barh(np.arange(len(names)), [reasons[n] for n in names], color=_BAR)
    ax.set_yticks(np.arange(len(names)), [f"{n} ({stages.get(n, '?')})" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("documents")
    return Panel("dead_letter", _png(fig), f"{sum(reasons.values())} dead-lettered of "
                                           f"{summary['read']} read.")


def _throughput(summary: dict) -> Panel:
    samples = _samples(summary.get("throughput") or [], summary.get("throughput_read"))
    if len(samples) < 2:
        return _message("throughput", "No progress samples (recorded by local runs only).")
    seconds, done, read = samples[:, 0], samples[:, 1], samples[:, 4]
    fig, ax = _figure("throughput")
    has_read = not np.isnan(read).all()
    if has_read:
        ax.plot(seconds, read, linestyle="--", color=_BAR, label="read")
    ax.plot(seconds, done, marker="o", markersize=3, color=_BAR, label="done")
    ax.set_xlabel("seconds since the pipeline started")
    ax.set_ylabel("documents")
    rate = ax.twinx()
    rate.step(seconds[1:], np.diff(done) / np.maximum(np.diff(seconds), 1e-9), where="pre",
              color=_PREVIOUS, label="done / s")
    rate.set_ylabel("documents done / s", color="#7a8aa3")
    rate.spines[["top"]].set_visible(False)
    if has_read:
        handles = ax.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="center left", frameon=False, fontsize=8)
    mean = done[-1] / seconds[-1] if seconds[-1] > 0 else 0.0
    note = (f"{int(done[-1])} documents in {seconds[-1]:.1f} s ({mean:.1f} documents/s on "
            "average). A document is done once written (or carried forward, or dead-lettered).")
    started = seconds[done > 0]
    if has_read and len(started) and started[0] > seconds[0]:
        options = (summary.get("options") or {}).get("bertbeam") or {}
        buffer = options.get("buffer_size") or BatchSpec.buffer_size
        note += (f" The first were done at {started[0]:.1f} s: until then documents are read "
                 f"and tokenized while the batcher gathers up to {buffer:,} windows to sort "
                 "them by length (dashed: documents read).")
    return Panel("throughput", _png(fig), note)


def _per_window(summary: dict) -> Panel:
    rows = summary.get("per_window") or []
    if not rows:
        return _message("per_window", "No window in this range has been written yet.")
    starts = [r[0] for r in rows]
    results, dead, deleted = (np.array([r[i] for r in rows], float) for i in (1, 2, 3))
    fig, ax = _figure("per_window")
    x = np.arange(len(rows))
    ax.bar(x, results, color=_BAR, label="results")
    ax.bar(x, dead, bottom=results, color=_FLAG, label="dead letter")
    if deleted.any():
        ax.bar(x, deleted, bottom=results + dead, color=_PREVIOUS, label="deleted")
    step = max(1, len(rows) // 6)
    ax.set_xticks(x[::step], [s[11:19] for s in starts[::step]], fontsize=8)
    ax.set_xlabel(f"window start (UTC), {starts[0][:10]}")
    ax.set_ylabel("rows")
    ax.legend(frameon=False, fontsize=8)
    busiest = int(np.argmax(results + dead + deleted))
    return Panel("per_window", _png(fig), (
        f"{len(rows)} windows from {starts[0]} to {starts[-1]}; the busiest, {starts[busiest]}, "
        f"holds {int((results + dead + deleted)[busiest])} rows."))


def _samples(rows: list[list[float]], reads: list[int | None] | None) -> np.ndarray:
    """Progress samples as an ``(n, 5)`` array ``[seconds, done, tokens, dead, read]``; the
    read column is NaN where unknown (a summary without ``throughput_read``: runs of
    bertbeam 0.2.0 and earlier)."""
    reads = list(reads or [])
    reads += [None] * (len(rows) - len(reads))
    return np.array([[*row[:4], read] for row, read in zip(rows, reads, strict=False)],
                    float).reshape(-1, 5)


def _norms(output_dir: Source, summary: dict) -> Panel:
    table = _columns(output_dir, ["embedding"], limit=SAMPLE_ROWS)
    if table is None or table.num_rows == 0:
        return _message("norms", "No embeddings in these results.")
    vectors = _vectors(table.column(0))
    norms = np.linalg.norm(vectors, axis=1)
    expected = summary.get("embedding_dimension")
    dimension_ok = expected is None or vectors.shape[1] == expected
    finite = bool(np.isfinite(vectors).all())
    panel = _histogram("norms", norms, "L2 norm",
                       f"Dimension {vectors.shape[1]} ({'as expected' if dimension_ok else f'expected {expected}'}); "
                       f"{'all values finite' if finite else 'NON-FINITE values'}; norms "
                       f"{norms.min():.4f} to {norms.max():.4f} over {len(norms)} rows.")
    return panel


def _vectors(column: pa.ChunkedArray) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), column.type.list_size).astype(np.float32)


def _neighbours(output_dir: Source, summary: dict) -> Panel:
    table = _columns(output_dir, ["id", "embedding"], limit=SAMPLE_ROWS)
    if table is None or table.num_rows < 4:
        return _message("neighbours", "Too few embeddings for a neighbour sample.")
    ids = table.column("id").to_pylist()
    vectors = _vectors(table.column("embedding"))
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    picked = np.random.default_rng(0).choice(len(ids), size=min(NEIGHBOUR_DOCS, len(ids)), replace=False)
    similarity = unit[picked] @ unit.T
    similarity[np.arange(len(picked)), picked] = -np.inf
    nearest = np.argsort(-similarity, axis=1)[:, :3]
    wanted = {ids[i] for i in picked} | {ids[j] for row in nearest for j in row}
    texts = _input_texts(summary, wanted)
    rows = []
    for row, i in enumerate(picked):
        rows.append([_preview(ids[i], texts), *[
            f"{_preview(ids[j], texts)} ({similarity[row, j]:.3f})" for j in nearest[row]]])
    return Panel("neighbours", note=f"{len(picked)} documents of a sample of {len(ids)}, with "
                                    "their 3 nearest by cosine similarity.", table=rows)


def _preview(doc_id: str, texts: dict[str, str]) -> str:
    text = texts.get(doc_id)
    return f"{doc_id}: {text[:90]}{'…' if len(text) > 90 else ''}" if text else doc_id


def _input_texts(summary: dict, ids: set[str], max_rows: int = 200_000) -> dict[str, str]:
    """Texts of ``ids`` from the run's input (its first ``max_rows`` rows); empty when the
    input cannot be read from here."""
    options = (summary.get("options") or {}).get("bertbeam") or {}
    id_column, text_column = options.get("id_column", "id"), options.get("text_column", "text")
    found: dict[str, str] = {}
    try:
        seen = 0
        pattern = summary["input"]
        if pattern.startswith("watch:"):  # a streaming run's watched glob
            pattern = pattern[len("watch:"):]
        for url in expand_glob(pattern):
            fs, path = url_to_fs(url)
            with fs.open(path, "rb") as f:
                table = pq.read_table(f, columns=[id_column, text_column])
            for doc_id, text in zip(table.column(0).to_pylist(), table.column(1).to_pylist(),
                                    strict=True):
                if str(doc_id) in ids and isinstance(text, str):
                    found[str(doc_id)] = text
            seen += table.num_rows
            if len(found) == len(ids) or seen >= max_rows:
                break
    except Exception as exc:  # the report still shows ids
        _LOG.info("No texts for the neighbour sample: %s", exc)
    return found


# -- the page -----------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px 32px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 6px; font-weight: 600; }
dl.header { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0 0 12px;
            font-size: 13px; }
dl.header dt { color: #666; } dl.header dd { margin: 0; }
ul.facts { margin: 0 0 16px; padding-left: 18px; color: #444; font-size: 13px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(640px, 1fr)); gap: 20px 28px; }
.panel h2 { font-size: 15px; margin: 6px 0; font-weight: 600; }
.panel p { color: #555; font-size: 12px; margin: 4px 0; }
.panel img { display: block; max-width: 100%; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0; }
td, th { border-bottom: 1px solid #e4e4e4; padding: 3px 8px 3px 0; text-align: left;
         vertical-align: top; } th { color: #666; font-weight: 500; }
.verdict-failed { color: #c0392b; font-weight: 600; }
"""
_DRAWN = ("<script>addEventListener('load', () => document.querySelectorAll('img').forEach("
          "i => i.dataset.drawn = i.naturalWidth));</script>")
"""Marks each figure with the width the browser decoded (tests read it with --dump-dom)."""


def header_rows(summary: dict, previous: str | None) -> list[tuple[str, str]]:
    """The header's lines: counts, speed, where it ran, the model, versions, times."""
    def num(value: object, fmt: str = ",") -> str:
        return format(value, fmt) if isinstance(value, int | float) else "n/a"

    counts = [f"{num(summary['read'])} read", f"{num(summary.get('computed'))} computed",
              f"{num(summary.get('carried_forward'))} carried forward"]
    if summary.get("removed") is not None:
        counts.append(f"{num(summary['removed'])} removed")
    fraction = summary.get("dead_letter_fraction")
    counts.append(f"{num(summary['dead_lettered'])} dead-lettered"
                  + (f" ({100 * fraction:.1f}%)" if fraction is not None else ""))
    speed = [f"{num(summary.get('docs_per_second'), ',.1f')} docs/s",
             f"{num(summary.get('tokens_per_second'), ',.0f')} tokens/s",
             f"padding efficiency {num(summary.get('padding_efficiency'), '.3f')}",
             f"{num(summary.get('pipeline_seconds'), ',.1f')} s pipeline, "
             f"{num(summary.get('process_seconds'), ',.1f')} s process"]
    ran = [f"{summary.get('runner', 'n/a')}", f"backend {summary.get('backend', 'torch')}",
           f"device {summary.get('device', 'n/a')}", f"dtype {summary.get('dtype', 'n/a')}"]
    if summary.get("quantization") not in (None, "none"):
        ran.append(f"quantization {summary['quantization']}")
    if summary.get("threads"):
        ran.append(f"{summary['threads']} threads")
    versions = summary.get("versions") or {}
    rows = [("documents", ", ".join(counts)), ("speed", ", ".join(speed)), ("ran on", ", ".join(ran)),
            ("model", f"{summary['model']} ({summary.get('model_fingerprint', 'n/a')})"),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)),
            ("when", f"{summary.get('started_at', 'n/a')} to {summary.get('finished_at', 'n/a')}")]
    if summary.get("mode") == "streaming":
        rows = _streaming_header(summary, rows)
    if previous:
        rows.append(("previous run", previous))
    if summary.get("sink"):
        sink = summary["sink"]
        rows.append(("sink", f"{sink['kind']} {sink['location']} / {sink['collection']}: "
                             f"{num(sink.get('points'))} points, "
                             f"{'verified' if sink.get('verified') else 'NOT verified'}"))
    return rows


def _streaming_header(summary: dict, rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A streaming report's header: the counts of its windows, their range, the latency."""
    start, end = summary.get("window_range") or (None, None)
    span = ("every window" if start is None and end is None else
            f"the windows from {start or 'the first'} to {end or 'the last'}")
    counts = (f"{summary['read']:,} rows in {summary['windows']} window(s): "
              f"{summary['written']:,} written, {summary['dead_lettered']:,} dead-lettered, "
              f"{summary.get('deleted', 0):,} deleted")
    latency = summary.get("latency_seconds") or {}
    kept = [(k, v) for k, v in rows if k in ("model", "versions") and v]
    out = [("documents", counts), ("windows", f"{span}{' (still running)' if summary.get('running') else ''}")]
    if latency:
        out.append(("latency", ", ".join(f"{k} {v} s" for k, v in latency.items()
                                         if v is not None)
                    + " (end to end, every window of the run)"))
    return out + kept


def render(summary: dict, panels: list[Panel], previous: str | None = None) -> str:
    """The HTML page of ``summary`` and its ``panels``: one file, figures inline, the panels
    whose data isn't there as one-line facts under the header."""
    esc = html.escape
    header = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in header_rows(summary, previous))
    verdict = summary.get("verdict")
    if verdict == "too_many_dead_letters":
        header += ("<dt>verdict</dt><dd class='verdict-failed'>failed: more rows dead-lettered "
                   "than the limits allow</dd>")
    facts = "".join(f"<li>{esc(p.fact)}</li>" for p in panels if p.fact is not None)
    sections = []
    for panel in panels:
        if panel.fact is not None:
            continue
        body = ""
        if panel.png is not None:
            data = base64.b64encode(panel.png).decode("ascii")
            body += (f'<img id="figure-{panel.key}" alt="{esc(panel.title)}" '
                     f'src="data:image/png;base64,{data}">')
        if panel.table:
            head = panel.header or ["document", "1st", "2nd", "3rd"]
            cells = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                            for row in panel.table)
            body += ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head)
                     + f"</tr>{cells}</table>")
        sections.append(f'<section class="panel" id="panel-{panel.key}"><h2>{esc(panel.title)}'
                        f"</h2>{body}<p>{esc(panel.note)}</p></section>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>bertbeam "
            f"{esc(summary['task'])} report</title><style>{_CSS}</style></head><body>"
            f"<h1>bertbeam {esc(summary['task'])}: {esc(summary.get('output', ''))}</h1>"
            f"<dl class='header'>{header}</dl>"
            + (f"<ul class='facts'>{facts}</ul>" if facts else "")
            + f"<div class='grid'>{''.join(sections)}</div>{_DRAWN}</body></html>")
