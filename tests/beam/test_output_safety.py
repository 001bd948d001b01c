"""The output directory: one run at a time (a lock), a full disk or an interrupted run ends in
one line and leaves no partial file, `_SUMMARY.json` is never partial, and the reader parses
each file's footer once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import read_output, read_summary, run_cli, write_corpus

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, list[str]]:
    from bertbeam.cli.demo import demo_texts

    texts = demo_texts()
    ids = [f"s{i}" for i in range(200)]
    path = tmp_path_factory.mktemp("safety") / "in.parquet"
    write_corpus(path, {"id": ids, "text": [texts[i][:300] for i in range(len(ids))]})
    return str(path), ids


def _lock(out: Path, **fields) -> None:
    """A lock whose owner token names this (live) process, unless ``fields`` say otherwise."""
    from bertbeam.run.runlock import owner_token

    out.mkdir(parents=True, exist_ok=True)
    record = {"run_id": "other-run", "started_at": "2026-01-01T00:00:00+00:00",
              "heartbeat_at": "2026-01-01T00:00:00+00:00", **owner_token()}
    (out / "_LOCK.json").write_text(json.dumps({**record, **fields}))


# -- one run at a time -------------------------------------------------------------------------


def test_a_second_run_into_a_locked_output_is_refused(tmp_path, corpus, tiny_model, capsys):
    """A live run holds the output (here: this very process): the second refuses, one line."""
    path, _ = corpus
    out = tmp_path / "out"
    _lock(out)
    model = tiny_model("bert", "base")
    capsys.readouterr()
    assert run_cli("embed", "--input", path, "--output", out, "--model", model) == 2
    err = capsys.readouterr().err.strip()
    assert "in use by run 'other-run'" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert json.loads((out / "_LOCK.json").read_text())["run_id"] == "other-run"
    assert not list(out.glob("results-*"))


@pytest.mark.parametrize("stale", [
    {"pid": 2**22 + 12345},  # same host, the process is gone
    {"host": "another-host", "pid": 1},  # another host, no heartbeat for far too long
    # A restarted container: the same host and pid (alive: it is this very process), but
    # that pid's process started at another time. The pid alone would refuse forever.
    {"process_started": 1},
    # An older bertbeam's lock (no owner token) naming a live pid, not renewed for long.
    {"boot_id": None, "pid_namespace": None, "process_started": None},
])
def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path, corpus, tiny_model, stale):
    path, ids = corpus
    out = tmp_path / "out"
    _lock(out, **stale)
    assert run_cli("embed", "--input", path, "--output", out, "--model",
                   tiny_model("bert", "base")) == 0
    assert sorted(r["id"] for r in read_output(out)) == sorted(ids)
    assert read_summary(out)["accounted"] is True
    assert not (out / "_LOCK.json").exists(), "the lock is removed when the run ends"


def test_the_owner_token_tells_a_live_holder_from_a_replaced_or_rebooted_one():
    """Issue 27: a lease with a heartbeat and an owner token, not the pid alone."""
    from bertbeam.run.runlock import is_stale, owner_token

    me = owner_token()
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    long_ago = "2020-01-01T00:00:00+00:00"
    assert me["boot_id"] and isinstance(me["process_started"], int)  # Linux: all of it known
    assert not is_stale({**me, "heartbeat_at": now})
    assert not is_stale({**me, "heartbeat_at": long_ago})  # alive: a late heartbeat is no matter
    assert is_stale({**me, "heartbeat_at": now, "process_started": me["process_started"] + 1})
    assert is_stale({**me, "heartbeat_at": now, "boot_id": "an-earlier-boot"})
    # Pids of another namespace (another container on this host) cannot be asked: the lease.
    other_ns = {**me, "pid_namespace": "pid:[1]", "pid": 2**22 + 12345}
    assert not is_stale({**other_ns, "heartbeat_at": now})
    assert is_stale({**other_ns, "heartbeat_at": long_ago})


def test_a_fresh_lock_of_another_host_is_respected():
    from bertbeam.run.runlock import is_stale

    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    assert not is_stale({"host": "another-host", "pid": 1, "heartbeat_at": now})
    assert is_stale({"host": "another-host", "pid": 1, "heartbeat_at": "2020-01-01T00:00:00+00:00"})
    assert is_stale({"partial": True})


@pytest.mark.parametrize("root", ["local", "memory"])
def test_of_two_runs_starting_at_once_exactly_one_gets_the_lock(tmp_path, root):
    from bertbeam.run.runlock import OutputLockedError, RunLock

    out = str(tmp_path / "out") if root == "local" else "memory://bertbeam-lock-race/out"
    Path(out).mkdir(exist_ok=True) if root == "local" else None
    barrier = threading.Barrier(8)
    outcomes: list[object] = []

    def start() -> None:
        lock = RunLock(out)
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append(lock)
        except OutputLockedError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [o for o in outcomes if isinstance(o, RunLock)]
    assert len(held) == 1 and len(outcomes) == 8
    held[0].release()
    assert held[0].read() is None


def test_the_lock_is_refreshed_while_the_run_lasts(tmp_path):
    from bertbeam.run.runlock import RunLock

    with RunLock(str(tmp_path), heartbeat_seconds=0.05) as lock:
        first = lock.read()["heartbeat_at"]
        time.sleep(0.3)
        assert lock.read()["heartbeat_at"] > first
    assert lock.read() is None


# -- full disk, interruption, partial files --------------------------------------------------


@pytest.fixture()
def small_disk(tmp_path):
    """A 1 MiB tmpfs with about 24 KiB left: enough for the launcher's checks, not for the
    results."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    (mount / "filler").write_bytes(b"\0" * (free - 24 * 1024))
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_ends_in_one_line_without_partial_files(small_disk, tmp_path, tiny_model,
                                                            capsys):
    from bertbeam.cli.demo import demo_texts

    texts = demo_texts()
    ids = [f"d{i}" for i in range(3000)]
    path = write_corpus(tmp_path / "big.parquet",
                        {"id": ids, "text": [texts[i % len(texts)][:200] for i in range(len(ids))]})
    out = small_disk / "out"
    model = tiny_model("bert", "base")
    capsys.readouterr()
    code = run_cli("embed", "--input", path, "--output", out, "--model", model, "--quiet")
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    assert "No space left on device" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err[-3000:]
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if n.startswith((".temp-", "._SUMMARY", "_SUMMARY"))], left
    assert "_LOCK.json" not in left


def test_a_full_disk_is_one_line_from_the_real_command_too(small_disk, tmp_path, tiny_model):
    """Issue 27: the command as a user runs it (its own process, logging to stderr): the
    runner's error log and its traceback of the failing write are not printed, the one line
    is."""
    from bertbeam.cli.demo import demo_texts

    texts = demo_texts()
    path = write_corpus(tmp_path / "big.parquet",
                        {"id": [f"d{i}" for i in range(3000)],
                         "text": [texts[i % len(texts)][:200] for i in range(3000)]})
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from bertbeam.cli import main; sys.exit(main())",
         "embed", "--input", path, "--output", str(small_disk / "out"), "--model",
         tiny_model("bert", "base"), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-3000:]
    assert err.startswith("bertbeam: error: the run failed:") and "No space left on device" in err


def test_the_summary_is_never_left_partial(tmp_path, monkeypatch):
    """A write that fails part-way (a full disk) leaves the old summary or none, never a
    partial one, on every file system bertbeam writes through."""
    import errno

    from bertbeam.run import summary

    def failing_dump(value, f, **kwargs):
        f.write('{"read": 1')
        raise OSError(errno.ENOSPC, "No space left on device")

    for directory in (str(tmp_path), "memory://bertbeam-summary-test"):
        summary.write_summary(directory, {"complete": True})
        monkeypatch.setattr(json, "dump", failing_dump)
        with pytest.raises(OSError):
            summary.write_summary(directory, {"complete": False})
        monkeypatch.undo()
        from bertbeam.filesystems import url_to_fs

        fs, root = url_to_fs(directory)
        assert [p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)] == ["_SUMMARY.json"]
        with fs.open(f"{root}/_SUMMARY.json") as f:
            assert json.load(f) == {"complete": True}


WORKERS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


@pytest.mark.parametrize(("sig", "code", "workers"), [
    (signal.SIGTERM, 143, ()),
    # Ctrl-C at a terminal signals the whole process group, worker processes included.
    pytest.param(signal.SIGINT, 130, WORKERS, marks=pytest.mark.slow),
    pytest.param(signal.SIGTERM, 143, WORKERS, marks=pytest.mark.slow),
])
def test_an_interrupted_run_says_so_in_one_line_and_a_rerun_cleans_up(tmp_path, corpus,
                                                                       tiny_model, sig, code,
                                                                       workers):
    from bertbeam.cli.demo import demo_texts

    texts = demo_texts()
    ids = [f"k{i}" for i in range(3000)]
    path = write_corpus(tmp_path / "big.parquet",
                        {"id": ids, "text": [texts[i % len(texts)][:400] for i in range(len(ids))]},
                        row_group_size=100)
    out = tmp_path / "out"
    model = tiny_model("bert", "base")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertbeam.cli", "embed", "--input", path, "--output", str(out),
         "--model", model, "--token-budget", "256", *workers],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not list(out.glob(".temp-*")):
        time.sleep(0.1)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "interrupted; rerun to resume" in err
    assert "Traceback" not in err and "terminate called" not in err, err[-4000:]
    assert "Worker subprocess exited" not in err
    assert not (out / "_SUMMARY.json").exists()
    assert not (out / "_LOCK.json").exists()
    small, small_ids = corpus
    assert run_cli("embed", "--input", small, "--output", out, "--model", model) == 0
    assert sorted(r["id"] for r in read_output(out)) == sorted(small_ids)
    assert read_summary(out)["accounted"] is True
    assert not list(out.glob(".temp-*"))


# -- footers -----------------------------------------------------------------------------------


def test_each_files_footer_is_parsed_once_per_worker(tmp_path, monkeypatch):
    """A file of G row groups read one row group per work item: G footer parses made the
    read O(G²) (3,000 one-row groups took 73 s)."""
    import apache_beam as beam

    from bertbeam.beam.reading import ReadDocuments

    groups = 300
    path = write_corpus(tmp_path / "many.parquet",
                        {"id": [f"r{i}" for i in range(groups)], "text": ["some text"] * groups},
                        row_group_size=1)
    parses = []
    real_init = pq.ParquetFile.__init__

    def counting_init(self, source, *args, metadata=None, **kwargs):
        if metadata is None:
            parses.append(1)
        real_init(self, source, *args, metadata=metadata, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "__init__", counting_init)
    seen = tmp_path / "seen"
    with beam.Pipeline() as p:
        read = p | ReadDocuments(path)
        (read["documents"]
         | beam.combiners.Count.Globally()
         | beam.Map(lambda n: seen.write_text(str(n))))
    assert seen.read_text() == str(groups)
    assert len(parses) <= 10, f"{len(parses)} footer parses for {groups} row groups"


def test_results_stream_into_files_a_row_group_at_a_time(tmp_path):
    """The writer holds one row group, not a file's worth of rows: 2,500 rows arriving in
    batches of 100, with files of 1,000 rows and row groups of 300, land as files of whole
    row groups of at most 300 rows (one row group per file would mean the file was held in
    memory), with every row once."""
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline

    from bertbeam.beam import writing
    from bertbeam.run.runners import resolve_runner

    schema = pa.schema({"id": pa.string(), "value": pa.float32()})
    batches = [pa.record_batch({"id": [f"r{i}" for i in range(s, s + 100)],
                                "value": pa.array(range(s, s + 100), pa.float32())}, schema=schema)
               for s in range(0, 2500, 100)]
    out = tmp_path / "out"
    write = writing.WriteResults(str(out), schema=schema, rows_per_file=1000)
    with TestPipeline(runner=resolve_runner(PipelineOptions())) as p:
        (p | beam.Create([0]) | beam.FlatMap(lambda _: batches)
         | write._shards(row_group_rows=300) | write._finalize())
    files = writing.committed_files(str(out), "results")
    groups = [pq.ParquetFile(f).metadata.row_group(g).num_rows
              for f in files for g in range(pq.ParquetFile(f).num_row_groups)]
    assert max(groups) == 300 and sum(groups) == 2500, groups
    assert len(files) == 3  # 1,200 + 1,200 + 100: a file closes once it holds 1,000 rows
    ids = writing.read_table(str(out)).column("id").to_pylist()
    assert sorted(ids) == sorted(f"r{i}" for i in range(2500))


def test_float_columns_are_written_without_a_dictionary(tmp_path):
    """Embeddings and scores almost never repeat: their Parquet columns are plain-encoded
    (a dictionary only costs a hash per value), nested ones included, while string columns
    keep their dictionaries; every value reads back as written, with checksums."""
    import io

    import pyarrow as pa

    from bertbeam.beam import writing
    from bertbeam.filesystems import url_to_fs

    schema = pa.schema({"id": pa.string(), "embedding": pa.list_(pa.float32(), 2),
                        "labels": pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())])),
                        "model": pa.string()})
    table = pa.table({"id": ["a", "b", "c"], "embedding": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]],
                      "labels": [[{"label": "x", "score": 0.25}]] * 3, "model": ["m"] * 3},
                     schema=schema)
    fs, path = url_to_fs(str(tmp_path / "t.parquet"))
    writing.write_table(fs, path, table)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings
                 for i in range(meta.num_columns)}
    plain = {"embedding.list.element", "labels.list.element.score"}
    for column, used in encodings.items():
        assert ("RLE_DICTIONARY" in used) == (column not in plain), (column, used)
    with open(path, "rb") as f:
        assert pq.read_table(io.BytesIO(f.read()), page_checksum_verification=True).equals(table)
