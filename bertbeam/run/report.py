"""The run report: ``OUTPUT/_REPORT.html``, one self-contained page (figures embedded as PNG
data URIs), and each figure as ``OUTPUT/_REPORT-<panel>.png``.

Panels: label distribution and its change since the previous run (labels whose share moved
more than a threshold are flagged), score histogram, tokens and windows per document,
dead-letter reasons, throughput over the run; for embed, norm and dimension checks and a few
documents with their 3 nearest neighbours in a sample. Each figure (and the neighbour
table) has a frame of its panel's own colour (:data:`PANELS`), and nothing else on the page
has that colour, so a screenshot shows which panels rendered.

Example::

    write_report("out/2026-11-28", previous="out/2026-11-27")
"""

from __future__ import annotations

import base64
import html
import io
import logging
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertbeam.filesystems import expand_glob, url_to_fs, write_file_safely

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
    # key: (title, frame colour)
    "labels": ("Label distribution", "#2a9d8f"),
    "scores": ("Scores", "#e9c46a"),
    "tokens": ("Tokens per document", "#f4a261"),
    "windows": ("Windows per document", "#264653"),
    "dead_letter": ("Dead-letter reasons", "#e76f51"),
    "throughput": ("Throughput over the run", "#8338ec"),
    "norms": ("Embedding norms and dimension", "#3a86ff"),
    "neighbours": ("Nearest neighbours (sample)", "#ff006e"),
}
_BAR, _FLAG, _PREVIOUS = "#5b6f8a", "#c0392b", "#b8c4d6"


def panels_for(task: str) -> list[str]:
    """The panels a report of ``task`` shows, in order."""
    first = ["labels"] if task in LABEL_TASKS else []
    scores = [] if task == "embed" else ["scores"]
    last = ["norms", "neighbours"] if task == "embed" else []
    return [*first, *scores, "tokens", "windows", "dead_letter", "throughput", *last]


@dataclass
class Panel:
    key: str
    png: bytes | None = None
    note: str = ""
    table: list[list[str]] | None = None

    @property
    def title(self) -> str:
        return PANELS[self.key][0]

    @property
    def color(self) -> str:
        return PANELS[self.key][1]


def write_report(output_dir: str, previous: str | None = None,
                 threshold: float = MOVE_THRESHOLD) -> str:
    """Writes ``_REPORT.html`` and the PNGs of ``output_dir`` (a finished run: it reads its
    ``_SUMMARY.json`` and results); ``previous`` is an earlier run's output directory to
    compare labels with. Returns the report's URL."""
    import matplotlib

    matplotlib.use("Agg")
    from bertbeam.run.summary import read_summary

    summary = read_summary(output_dir)
    before = _previous_summary(previous)
    builders = {
        "labels": lambda: _labels(summary, before, threshold),
        "scores": lambda: _scores(output_dir),
        "tokens": lambda: _tokens(output_dir, summary),
        "windows": lambda: _windows(output_dir),
        "dead_letter": lambda: _dead_letter(summary),
        "throughput": lambda: _throughput(summary),
        "norms": lambda: _norms(output_dir, summary),
        "neighbours": lambda: _neighbours(output_dir, summary),
    }
    panels = [builders[key]() for key in panels_for(summary["task"])]
    fs, root = url_to_fs(output_dir)
    root = root.rstrip("/")
    # Through a temporary file and a rename, refusing a link planted in the output (issue 27).
    for panel in panels:
        if panel.png is not None:
            write_file_safely(fs.unstrip_protocol(f"{root}/_REPORT-{panel.key}.png"), panel.png)
    write_file_safely(fs.unstrip_protocol(f"{root}/{REPORT_FILE}"), render(summary, panels, previous))
    return fs.unstrip_protocol(f"{root}/{REPORT_FILE}")


def _previous_summary(previous: str | None) -> dict | None:
    if previous is None:
        return None
    from bertbeam.run.summary import read_summary

    try:
        return read_summary(previous)
    except (OSError, ValueError) as exc:
        _LOG.warning("The report compares with nothing: no summary in %s (%s).", previous, exc)
        return None


# -- data ---------------------------------------------------------------------------------


def _result_files(output_dir: str) -> list[str]:
    return expand_glob(f"{output_dir.rstrip('/')}/results-*-of-*.parquet")


def _row_groups(output_dir: str, wanted: list[str]) -> Iterator[pa.Table]:
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


def _columns(output_dir: str, wanted: list[str], limit: int | None = None) -> pa.Table | None:
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
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, height), dpi=100)
    fig.patch.set_edgecolor(PANELS[key][1])
    fig.patch.set_linewidth(12)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout(pad=1.6)
    fig.savefig(buffer, format="png", edgecolor=fig.get_edgecolor())
    plt.close(fig)
    return buffer.getvalue()


def _message(key: str, text: str) -> Panel:
    """A panel whose figure says why there is nothing to plot."""
    fig, ax = _figure(key, height=1.6)
    ax.axis("off")
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(text, 70)), ha="center", va="center", fontsize=10,
            color="#444444")
    return Panel(key, _png(fig))


def _histogram(key: str, values: np.ndarray, xlabel: str, note: str, *, integer: bool = False,
               log: bool = False) -> Panel:
    """``log``: a logarithmic x axis with bins of equal width on it (for counts that span
    orders of magnitude, such as tokens per document)."""
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


def _scores(output_dir: str) -> Panel:
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


def _tokens(output_dir: str, summary: dict) -> Panel:
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


def _windows(output_dir: str) -> Panel:
    table = _columns(output_dir, ["n_chunks"])
    if table is None:
        return _message("windows", "This task reads the first window of each document only.")
    values = table.column(0).to_numpy(zero_copy_only=False)
    chunked = int((values > 1).sum())
    return _histogram("windows", values, "windows per document",
                      f"{chunked} of {len(values)} documents had more than one window.",
                      integer=True)


def _dead_letter(summary: dict) -> Panel:
    from bertbeam.core.deadletter import REASONS, Reason

    reasons = summary.get("dead_letter_reasons") or {}
    if not reasons:
        return _message("dead_letter", "No document was dead-lettered.")
    names = sorted(reasons, key=lambda r: -reasons[r])
    stages = {r.value: stage.value for r, (stage, _) in REASONS.items() if isinstance(r, Reason)}
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
        from bertbeam.config import BatchSpec

        options = (summary.get("options") or {}).get("bertbeam") or {}
        buffer = options.get("buffer_size") or BatchSpec.buffer_size
        note += (f" The first were done at {started[0]:.1f} s: until then documents are read "
                 f"and tokenized while the batcher gathers up to {buffer:,} windows to sort "
                 "them by length (dashed: documents read).")
    return Panel("throughput", _png(fig), note)


def _samples(rows: list[list[float]], reads: list[int | None] | None) -> np.ndarray:
    """Progress samples as an ``(n, 5)`` array ``[seconds, done, tokens, dead, read]``; the
    read column is NaN where unknown (a summary without ``throughput_read``: runs of
    bertbeam 0.2.0 and earlier)."""
    reads = list(reads or [])
    reads += [None] * (len(rows) - len(reads))
    return np.array([[*row[:4], read] for row, read in zip(rows, reads, strict=False)],
                    float).reshape(-1, 5)


def _norms(output_dir: str, summary: dict) -> Panel:
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


def _neighbours(output_dir: str, summary: dict) -> Panel:
    table = _columns(output_dir, ["id", "embedding"], limit=SAMPLE_ROWS)
    if table is None or table.num_rows < 4:
        return Panel("neighbours", note="Too few embeddings for a neighbour sample.")
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
        for url in expand_glob(summary["input"]):
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
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; }
.facts { color: #555; margin: 0 0 16px; display: flex; flex-wrap: wrap; gap: 4px 18px; }
.facts span { white-space: nowrap; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(660px, 1fr)); gap: 16px; }
.panel { background: white; border-radius: 6px; padding: 10px 12px; border-top: 6px solid #ccc; }
.panel h2 { font-size: 16px; margin: 4px 0 8px; } .panel p { color: #444; font-size: 13px; }
.panel img { display: block; max-width: 100%; }
table { border-collapse: collapse; font-size: 12px; } td { border: 1px solid #ddd; padding: 4px; }
"""


def render(summary: dict, panels: list[Panel], previous: str | None = None) -> str:
    """The HTML page of ``summary`` and its ``panels``: one file, figures inline."""
    esc = html.escape
    facts = {
        "task": summary["task"], "model": summary["model"],
        "model fingerprint": summary.get("model_fingerprint"),
        "read": summary["read"], "computed": summary.get("computed"),
        "carried forward": summary.get("carried_forward"),
        "dead-lettered": summary["dead_lettered"],
        "started": summary.get("started_at"), "finished": summary.get("finished_at"),
        "pipeline s": summary.get("pipeline_seconds"), "device": summary.get("device"),
        "dtype": summary.get("dtype"), "previous run": previous,
    }
    fact_html = "".join(f"<span><b>{esc(k)}</b> {esc(str(v))}</span>" for k, v in facts.items()
                        if v is not None)
    sections = []
    for panel in panels:
        body = ""
        if panel.png is not None:
            data = base64.b64encode(panel.png).decode("ascii")
            body += f'<img alt="{esc(panel.title)}" src="data:image/png;base64,{data}">'
        if panel.table:
            cells = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                            for row in panel.table)
            body += (f'<table style="border: 6px solid {panel.color}"><tr><td><b>document</b></td>'
                     "<td><b>1st</b></td><td><b>2nd</b></td>"
                     f"<td><b>3rd</b></td></tr>{cells}</table>")
        sections.append(f'<section class="panel" id="panel-{panel.key}"><h2>{esc(panel.title)}'
                        f"</h2>{body}<p>{esc(panel.note)}</p></section>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>bertbeam "
            f"{esc(summary['task'])} report</title><style>{_CSS}</style></head><body>"
            f"<h1>bertbeam {esc(summary['task'])}: {esc(summary.get('output', ''))}</h1>"
            f"<p class='facts'>{fact_html}</p><div class='grid'>{''.join(sections)}</div>"
            "</body></html>")
