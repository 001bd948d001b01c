"""Live progress on stderr: a bar on a terminal, periodic lines otherwise, nothing with
``--quiet``; the start line; the worker tally behind them."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from bertbeam.core import metrics, tally
from bertbeam.run import progress
from tests.conftest import SAMPLE_TEXTS, run_cli, write_corpus

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^bertbeam embed: (\d+)/(\d+) documents \([\d.]+%\)(?:, [\d,]+ read)?, [\d.]+ docs/s, [\d,]+ "
                  r"tokens/s, (\d+) dead-lettered, ETA \S+$")
START = re.compile(r"^bertbeam embed: 11 documents; model .+ \([0-9a-f]{16}\); backend torch, device cpu, "
                   r"dtype float32, \d+ threads, \d+ streams(; this CPU has AMX: .+)?$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    ids = [f"d{i}" for i in range(len(SAMPLE_TEXTS) + 1)]
    return write_corpus(tmp_path_factory.mktemp("progress") / "p.parquet",
                        {"id": ids, "text": [*SAMPLE_TEXTS, None]})


def test_a_run_under_a_pseudo_terminal_shows_a_progress_bar(tmp_path, tiny_model, corpus):
    """stderr on a terminal: the start line, then a tqdm bar with docs/s, tokens/s and the
    dead letters, ending at 11/11."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertbeam.cli", "embed", "--input", corpus, "--output",
         str(tmp_path / "out"), "--model", tiny_model("bert", "base"), "--no-report"],
        cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True,
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")})
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    assert proc.wait(timeout=300) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    frames = [f.strip() for f in re.split(r"[\r\n]", screen) if f.strip()]
    assert any(START.match(f) for f in frames), frames
    bars = [f for f in frames if re.search(r"bertbeam embed: +\d+%\|.*\| *\d+/11 ", f)]
    assert bars, frames
    assert re.search(r"100%\|.*\| 11/11 .*docs/s, 11 read, .*tokens/s, 1 dead-lettered", bars[-1]), bars[-1]
    assert not any(LINE.match(f) for f in frames)  # no plain lines on a terminal


def test_a_run_without_a_terminal_prints_progress_lines(tmp_path, tiny_model, corpus, capfd):
    assert run_cli("embed", "--input", corpus, "--output", tmp_path, "--no-report",
                   "--model", tiny_model("bert", "base")) == 0
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert START.match(lines[0]), lines[0]
    progress_lines = [LINE.match(line) for line in lines[1:] if LINE.match(line)]
    assert len(progress_lines) >= 2  # one at the start, one at the end at least
    assert [int(x) for x in progress_lines[-1].groups()] == [11, 11, 1]
    assert out.strip().startswith("bertbeam embed: 10 written, 1 dead-lettered of 11 read")


def test_quiet_prints_only_the_summary_line(tmp_path, tiny_model, corpus, capfd):
    assert run_cli("embed", "--input", corpus, "--output", tmp_path, "--quiet",
                   "--model", tiny_model("bert", "base")) == 0
    out, err = capfd.readouterr()
    assert err == ""
    assert len(out.strip().splitlines()) == 1 and "10 written" in out


def test_lines_come_every_interval_while_workers_count(monkeypatch):
    """The poller prints a line per interval from what worker processes flush; the final
    line waits for their last flush."""
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.2)
    stream = io.StringIO()
    with progress.LiveProgress(total=40, mode="lines", label="bertbeam embed",
                               stream=stream) as live:
        code = ("from bertbeam.core import metrics\nimport time\n"
                "for _ in range(4):\n    metrics.inc(metrics.WRITTEN, 10); time.sleep(0.3)\n"
                "time.sleep(0.8)\n")  # a worker process: its daemon thread flushes
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120,
                       env={**os.environ, tally.ENV: live.directory})
    lines = stream.getvalue().splitlines()
    counts = [int(LINE.match(line).group(1)) for line in lines]
    assert len(lines) >= 5 and counts == sorted(counts) and counts[-1] == 40
    assert {s[1] for s in live.samples} >= {0, 40}


def test_documents_read_show_before_any_is_done(monkeypatch):
    """The first seconds of a run: documents are read and tokenized while the batcher gathers
    its first batch, so nothing is done yet; the line and the samples show the reads. Workers
    that count no reads (no ``documents_read``) leave the read count out."""
    monkeypatch.setattr(progress, "LINE_SECONDS", 3600)
    stream = io.StringIO()
    with progress.LiveProgress(total=40, mode="lines", label="bertbeam embed",
                               stream=stream) as live:
        while not stream.getvalue():  # the poller's first line, at the start
            time.sleep(0.01)
        counts = Path(live.directory) / "counts"
        counts.mkdir(exist_ok=True)
        (counts / "worker.json").write_text(json.dumps({metrics.READ: 40, metrics.WINDOWS: 52}))
        live.sample()
        first = stream.getvalue().splitlines()[-1]
        (counts / "worker.json").write_text(json.dumps({metrics.WINDOWS: 52}))
        live.sample()
        without_reads = stream.getvalue().splitlines()[-1]
        (counts / "worker.json").write_text(json.dumps({metrics.READ: 40, metrics.WRITTEN: 40}))
    assert LINE.match(first) and "0/40 documents (0.0%), 40 read, 0.0 docs/s" in first, first
    assert " read" not in without_reads and "0/40 documents (0.0%), 0.0 docs/s" in without_reads
    assert [s[4] for s in live.samples[-3:]] == [40, None, 40]
    assert live.samples[-1][1] == 40


def test_the_eta_waits_for_the_first_documents_done():
    """The ETA is at the pace since the first documents were done, not the average since
    the start (which counts the seconds the batcher gathered its first windows): unknown at
    the first documents done, then the remaining documents at that pace."""
    live = progress.LiveProgress(total=2338, mode="off", label="bertbeam embed")
    live.samples = [[0.0, 0, 0, 0, None], [5.0, 0, 0, 0, 2338], [10.0, 20, 0, 0, 2338]]
    assert live.line(20, 0, 0, 10.0, 2338).endswith("ETA unknown")
    live.samples.append([15.0, 226, 0, 0, 2338])
    assert progress.eta_rate(live.samples, 226, 15.0) == pytest.approx(206 / 5)
    assert live.line(226, 0, 0, 15.0, 2338).endswith("ETA 51s")  # not 2m20s, the average's


def test_tally_sums_processes_and_threads(tmp_path, monkeypatch):
    monkeypatch.setenv(tally.ENV, str(tmp_path))
    threads = [threading.Thread(target=lambda: [metrics.inc(metrics.WINDOWS) for _ in range(500)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (tmp_path / "counts" / "other-process.json").write_text('{"windows": 7}')
    deadline = time.time() + 10
    while tally.read_totals(str(tmp_path)).get(metrics.WINDOWS) != 2007 and time.time() < deadline:
        time.sleep(0.1)
    assert tally.read_totals(str(tmp_path))[metrics.WINDOWS] == 2007


@pytest.mark.parametrize(("amx", "options", "hinted"), [
    (True, {}, True),
    (False, {}, False),
    (True, {"dtype": "float32"}, False),  # asked for float32: no advice
    (True, {"quantize": "int8"}, False),
    (True, {"backend": "onnx"}, False),
])
def test_the_start_line_points_cpu_runs_on_amx_to_bfloat16(monkeypatch, amx, options, hinted):
    from bertbeam.config import ModelSpec
    from bertbeam.core import models
    from bertbeam.run import job
    from bertbeam.run.job import _bf16_hint

    for module in (models, job):  # wherever the start line takes it from
        if hasattr(module, "cpu_runs_bf16_natively"):
            monkeypatch.setattr(module, "cpu_runs_bf16_natively", lambda: amx)
    runtime = {"device": "cpu", "dtype": "float32"}
    hint = _bf16_hint(ModelSpec(**options), runtime)
    assert ("--dtype bfloat16" in hint) is hinted
    assert _bf16_hint(ModelSpec(**options), {**runtime, "device": "auto"}) == ""  # a remote run
