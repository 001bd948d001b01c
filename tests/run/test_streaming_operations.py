"""Operating a streaming job: deletions from a tombstone field (Parquet and Pub/Sub), live
metrics (rate, latency, backlog) and the summary's latency."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertbeam.beam import latency
from bertbeam.beam.reading import Columns
from bertbeam.beam.sources import (
    deletion,
    is_deletion,
    is_tombstone,
    message_document,
    tombstone_mask,
)
from bertbeam.core import tally
from bertbeam.core.deadletter import DeadLetter
from bertbeam.core.records import Document
from bertbeam.run.live import LiveStream
from tests.conftest import SAMPLE_TEXTS


@pytest.mark.parametrize("value,gone", [
    (True, True), (False, False), (None, False), (1, True), (0, False), (2.0, True),
    ("true", True), ("TRUE", True), (" yes ", True), ("1", True), ("false", False),
    ("0", False), ("", False), (b"true", True), ("deleted", False),
])
def test_a_tombstone_value_is_true_only_when_it_says_so(value, gone):
    assert is_tombstone(value) is gone


def test_tombstone_columns_of_any_type():
    assert tombstone_mask(pa.array([True, None, False])) == [True, False, False]
    assert tombstone_mask(pa.array(["true", None, "no"])) == [True, False, False]
    assert tombstone_mask(pa.array([1, 0, None])) == [True, False, False]


def test_a_pubsub_tombstone_is_the_deletion_of_its_id():
    columns = Columns()
    gone = message_document(b'{"id": "d1", "deleted": true}', {}, columns, "deleted")
    assert is_deletion(gone) and gone.id == "d1"
    by_attribute = message_document(b"", {"id": "d2", "deleted": "true"}, columns, "deleted")
    assert is_deletion(by_attribute) and by_attribute.id == "d2"
    kept = message_document(b'{"id": "d3", "text": "hello", "deleted": false}', {}, columns,
                            "deleted")
    assert isinstance(kept, Document) and not is_deletion(kept) and kept.text == "hello"
    no_id = message_document(b'{"deleted": true}', {}, columns, "deleted")
    assert isinstance(no_id, DeadLetter)
    # without a tombstone field the same message is a document without text: a dead letter
    assert isinstance(message_document(b'{"id": "d1", "deleted": true}', {}, columns), DeadLetter)
    assert not is_deletion(Document("d4", "text")) and is_deletion(deletion("d4"))


def test_latency_quantiles_from_the_histogram_are_within_a_bucket():
    values = [0.05] * 90 + [0.8] * 9 + [3.0]
    counts = [0] * (len(latency.EDGES) + 1)
    import bisect

    for v in values:
        counts[bisect.bisect_left(latency.EDGES, v)] += 1
    p50, p99, top = (latency.quantile(counts, q) for q in (0.5, 0.99, 1.0))
    assert 0.05 <= p50 <= 0.05 * 1.25
    assert 0.8 <= p99 <= 0.8 * 1.25
    assert 3.0 <= top <= 3.0 * 1.25
    assert latency.quantile([0] * 5, 0.5) is None
    past_the_last_edge = [0] * len(latency.EDGES) + [1]
    assert latency.quantile(past_the_last_edge, 0.5) == math.inf


def test_live_lines_show_rate_latency_and_backlog(tmp_path, capsys):
    """The workers' counts (rows written per output, the latency histogram) reach the
    launcher through the tally; its line shows what was written in the stretch."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(10)], "text": ["x"] * 10}),
                   inbox / "a.parquet")
    with LiveStream(f"{inbox}/*.parquet", label="bertbeam embed", every=3600) as live:
        worker = tally.local_tally()
        worker.add("rows_written_results", 6)
        worker.add("rows_written_dead_letter", 1)
        latency.record([0.2] * 5 + [1.5])
        sample = live.sample()
    line = capsys.readouterr().err
    assert "6 written, 1 dead-lettered, 0 deleted" in line
    p50, p99 = (float(x) for x in re.search(r"latency p50 ([\d.]+) s, p99 ([\d.]+) s", line).groups())
    assert 0.2 <= p50 <= 0.25 and 1.5 <= p99 <= 1.5 * 1.25, line
    assert "backlog 3 rows" in line
    assert sample[1:5] == [6, 1, 0, 3]
    summary = live.summary()
    assert summary["latency_rows"] == 6
    assert 0.2 <= summary["latency_seconds"]["p50"] <= 0.25
    assert os.environ.get(tally.ENV) is None


def _land(inbox: Path, name: str, table: pa.Table) -> None:
    temp = inbox / f".{name}.tmp"
    pq.write_table(table, temp)
    temp.rename(inbox / name)


def test_watch_with_a_tombstone_column_deletes_from_the_sink_and_shows_live_metrics(
        tiny_model, tmp_path):
    """`--tombstone-column deleted`: a row whose field is true (its text may be null)
    deletes its id from the Qdrant collection and is written to the window's deleted-*
    file; every landed row is in the results, the dead letter or the deletions; the live
    lines and the summary show the latency."""
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    _land(inbox, "a.parquet", pa.table({"id": [f"a{i}" for i in range(4)],
                                        "text": SAMPLE_TEXTS[:4]}))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertbeam.cli.main", "embed", "--streaming",
         "--input", f"watch:{inbox}/*.parquet", "--output", str(out),
         "--model", tiny_model("bert", "base"), "--window-seconds", "2",
         "--watch-interval", "0.3", "--drain-timeout", "60", "--tombstone-column", "deleted",
         "--sink", f"qdrant:{tmp_path / 'qdrant'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not list(out.glob("results-*.parquet")) and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.3)
        first = time.time()
        time.sleep(2.2)  # the deletions land in a later window than a1 and a2 (2 s windows)
        _land(inbox, "b.parquet", pa.table({"id": ["a1", "c0", "a2"],
                                            "text": [None, SAMPLE_TEXTS[5], "ignored"],
                                            "deleted": [True, False, True]}))
        while not list(out.glob("deleted-*.parquet")) and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.3)
        time.sleep(max(0.0, 6.0 - (time.time() - first)))  # a live line (every 5 s)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "5 written, 0 dead-lettered, 2 deleted of 7 rows in 2 file(s)" in stdout
    deleted = sorted(r["id"] for f in out.glob("deleted-*.parquet")
                     for r in pq.read_table(f).to_pylist())
    assert deleted == ["a1", "a2"]
    assert "written" in stderr and "latency p50" in stderr and "backlog" in stderr
    summary = json.loads((out / "_SUMMARY.json").read_text())
    assert (summary["read"], summary["written"], summary["deleted"], summary["accounted"]) == (
        7, 5, 2, True)
    assert summary["latency_rows"] == 5 and summary["latency_seconds"]["p99"] is not None
    from bertbeam.beam.sinks import parse_sink

    sink = parse_sink(f"qdrant:{tmp_path / 'qdrant'}")
    client = sink.client()
    count, stored = sink.stored(client)
    sink.close(client)
    assert (count, sorted(stored)) == (3, ["a0", "a3", "c0"])


def _window_file(out: Path, prefix: str, start: str, table: pa.Table) -> None:
    import datetime as dt

    from bertbeam.beam.window_files import window_file_name

    class _Window:
        def __init__(self, begin: dt.datetime):
            self.start, self.end = begin.timestamp(), begin.timestamp() + 60

    begin = dt.datetime.fromisoformat(start).replace(tzinfo=dt.UTC)
    pq.write_table(table, out / window_file_name(prefix, _Window(begin), table))


def _streamed_output(out: Path) -> None:
    """A labelling stream's output: three one-minute windows of results, a dead letter in
    the second, a deletion in the third, and the job file a running stream has."""
    out.mkdir()
    (out / "_STREAM.json").write_text(json.dumps({
        "task": "classify", "model": "models/teacher", "mode": "streaming",
        "input": "watch:in/*.parquet", "window_seconds": 60}))
    for minute, labels in (("09:00", ["a", "a", "b"]), ("09:01", ["b", "b"]),
                           ("09:02", ["c"] * 4)):
        ids = [f"{minute}-{i}" for i in range(len(labels))]
        _window_file(out, "results", f"2026-12-06T{minute}", pa.table(
            {"id": ids, "label": labels, "score": [0.9] * len(labels)}))
    _window_file(out, "dead_letter", "2026-12-06T09:01", pa.table(
        {"id": ["bad"], "stage": ["read"], "reason": ["empty_text"], "message": ["empty"]}))
    _window_file(out, "deleted", "2026-12-06T09:02", pa.table({"id": ["gone"]}))


def test_the_report_of_a_running_streams_window_range(tmp_path):
    """`bertbeam report OUT --windows 09:01..09:03` on a stream still running (no summary
    yet): the counts, labels and dead-letter reasons of those windows only, and the rows per
    window."""
    from bertbeam.cli.main import main

    out = tmp_path / "out"
    _streamed_output(out)
    assert main(["report", str(out), "--windows", "2026-12-06T09:01..2026-12-06T09:03"]) == 0
    page = (out / "_REPORT.html").read_text()
    assert "8 rows in 2 window(s): 6 written, 1 dead-lettered, 1 deleted" in page
    assert "still running" in page and "Rows per window" in page
    assert (out / "_REPORT-per_window.png").exists() and (out / "_REPORT-labels.png").exists()
    assert "empty_text" in page  # the one dead-letter reason, as a fact

    assert main(["report", str(out)]) == 0
    assert "11 rows in 3 window(s): 9 written" in (out / "_REPORT.html").read_text()


@pytest.mark.parametrize("argv,message", [
    (["--windows", "09:00"], "expected START..END"),
    (["--windows", "yesterday.."], "is not a time"),
    (["--windows", "2026-12-06T10:00..2026-12-06T09:00"], "ends before it starts"),
])
def test_a_bad_window_range_is_one_line(tmp_path, capsys, argv, message):
    from bertbeam.cli.main import main

    out = tmp_path / "out"
    _streamed_output(out)
    assert main(["report", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_windows_of_a_batch_output_are_refused_in_one_line(tmp_path, capsys):
    from bertbeam.cli.main import main

    out = tmp_path / "batch"
    out.mkdir()
    (out / "_SUMMARY.json").write_text(json.dumps({"task": "embed", "model": "m", "read": 0}))
    assert main(["report", str(out), "--windows", "2026-12-06T09:00.."]) == 2
    err = capsys.readouterr().err
    assert "reports a streaming run's windows" in err and len(err.strip().splitlines()) == 1


def test_the_graph_with_tombstones_keeps_the_step_names_and_adds_its_own(tiny_model, tmp_path):
    """A job with --tombstone-column has the same step names as one without (plus its own),
    so adding it to a running Dataflow job is a graph change Dataflow can name."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from bertbeam import ModelSpec, RunSpec
    from bertbeam.run import streaming
    from bertbeam.run.job import Job
    from bertbeam.tasks.embed import EmbedTask

    job = Job(task=EmbedTask(), run=RunSpec(model=ModelSpec(uri=tiny_model("bert", "base"))),
              input="pubsub:projects/my-project/subscriptions/docs", output=str(tmp_path / "out"),
              columns=Columns())
    labels = {}
    for tombstone in (None, "deleted"):
        spec = streaming.StreamSpec(window_seconds=30, tombstone_column=tombstone)
        p = beam.Pipeline(options=PipelineOptions(["--streaming"]))
        streaming.build(p, job, streaming.preflight(job, spec), spec)
        labels[tombstone] = {t.full_label for t in p.transforms_stack[0].parts}
    assert labels[None] < labels["deleted"]
    assert labels["deleted"] - labels[None] == {"SplitDeletions", "DeletedRows", "WriteDeleted"}


def test_a_tombstone_column_no_landed_file_has_is_one_warning_line(tiny_model, tmp_path, capsys):
    """A misspelt --tombstone-column would delete nothing, silently: when files have landed
    and none has the column, the launch says so in one line (a file may lack it: a warning,
    not a refusal); a file that has it, or no file yet, says nothing."""
    from bertbeam import ModelSpec, RunSpec
    from bertbeam.run import streaming
    from bertbeam.run.job import Job
    from bertbeam.tasks.embed import EmbedTask

    inbox = tmp_path / "in"
    inbox.mkdir()
    job = Job(task=EmbedTask(), run=RunSpec(model=ModelSpec(uri=tiny_model("bert", "base"))),
              input=f"watch:{inbox}/*.parquet", output=str(tmp_path / "out"), columns=Columns())
    spec = streaming.StreamSpec(tombstone_column="deleted")
    streaming.preflight(job, spec)
    assert capsys.readouterr().err == ""
    pq.write_table(pa.table({"id": ["a"], "text": ["x"], "delete": [True]}), inbox / "a.parquet")
    streaming.preflight(job, spec)
    err = capsys.readouterr().err
    assert "none of the 1 file(s)" in err and "'deleted'" in err and len(err.splitlines()) == 1
    pq.write_table(pa.table({"id": ["b"], "text": ["y"], "deleted": [False]}), inbox / "b.parquet")
    streaming.preflight(job, spec)
    assert capsys.readouterr().err == ""
