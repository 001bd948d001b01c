"""Crashes and retries: a retried bundle never duplicates rows; a rerun into the same output
directory leaves one complete, consistent result set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import read_output, read_summary, run_cli, write_corpus

N_DOCS = 300


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from bertbeam.cli.demo import demo_texts

    texts = demo_texts()
    ids = [f"r{i}" for i in range(N_DOCS)]
    path = tmp_path_factory.mktemp("retries") / "in.parquet"
    write_corpus(path, {"id": ids, "text": [texts[i][:300] for i in range(N_DOCS)]},
                 row_group_size=50)
    return str(path), ids


def _fail_first_call(monkeypatch, cls, name, calls):
    """Makes ``cls.name`` run, then raise, the first time it is called (a worker crash after
    side effects); later calls (the runner's retries) behave normally."""
    original = getattr(cls, name)

    def flaky(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(name)
        if len(calls) == 1:
            raise RuntimeError(f"injected failure in {cls.__name__}.{name}")
        return result

    monkeypatch.setattr(cls, name, flaky)


@pytest.mark.parametrize("target", ["write", "model"])
def test_a_bundle_retried_after_a_failure_writes_each_row_once(tmp_path, corpus, tiny_model,
                                                              monkeypatch, target):
    """BundleBasedDirectRunner retries failed bundles (Dataflow does too): the failed
    attempt's temporary file or outputs must not reach the final result set."""
    from bertbeam.beam import writing
    from bertbeam.core import engine

    calls: list[str] = []
    if target == "write":
        _fail_first_call(monkeypatch, writing._WriteShardFn, "_write", calls)
    else:
        _fail_first_call(monkeypatch, engine.Engine, "_gather", calls)
    path, ids = corpus
    code = run_cli("embed", "--input", path, "--output", tmp_path, "--model",
                   tiny_model("bert", "base"), "--token-budget", "512",
                   "--runner", "BundleBasedDirectRunner")
    assert code == 0
    assert len(calls) > 1, "the injected failure did not happen"
    result_ids = [r["id"] for r in read_output(tmp_path)]
    assert sorted(result_ids) == sorted(ids)
    assert read_summary(tmp_path)["accounted"] is True
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".temp-")]


def test_finalize_replaces_an_earlier_runs_listed_files_and_nothing_else(tmp_path, corpus,
                                                                         tiny_model):
    """Files an earlier bertbeam run listed in its manifest are replaced; a user's file with a
    similar name is untouched; temporary directories of an interrupted run are removed."""
    import json

    path, ids = corpus
    model = tiny_model("bert", "base")
    # Files of an earlier, different run (listed in its manifest), an orphan of a crashed
    # attempt, and a user's own file that merely starts like bertbeam's.
    write_corpus(tmp_path / "results-00000-of-00009.parquet", {"id": ["stale"]})
    (tmp_path / "_MANIFEST-results.json").write_text(
        json.dumps({"prefix": "results", "files": ["results-00000-of-00009.parquet"]}))
    write_corpus(tmp_path / "results-2023-report.parquet", {"id": ["mine"]})
    orphan_dir = tmp_path / ".temp-results-deadbeef0000"
    write_corpus(orphan_dir / "results-orphan.parquet", {"id": ["orphan"]})
    (tmp_path / "_SUMMARY.json").write_text('{"stale": true}')
    assert run_cli("embed", "--input", path, "--output", tmp_path, "--model", model) == 0
    assert sorted(r["id"] for r in read_output(tmp_path)) == sorted(ids)
    assert "stale" not in read_summary(tmp_path)
    assert not (tmp_path / "results-00000-of-00009.parquet").exists()
    assert (tmp_path / "results-2023-report.parquet").exists()
    assert not orphan_dir.exists()


def test_a_file_named_like_bertbeams_that_no_manifest_lists_refuses_the_run(tmp_path, corpus,
                                                                          tiny_model, capsys):
    """Replacing it could delete someone's data and keeping it would mix two runs' results:
    the run is refused before it starts, with one line, and the file is left as it was."""
    path, _ = corpus
    foreign = write_corpus(tmp_path / "results-00000-of-00009.parquet", {"id": ["theirs"]})
    before = Path(foreign).read_bytes()
    code = run_cli("embed", "--input", path, "--output", tmp_path, "--model",
                   tiny_model("bert", "base"))
    err = capsys.readouterr().err
    assert code == 2
    assert "results-00000-of-00009.parquet" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert Path(foreign).read_bytes() == before
    assert not (tmp_path / "_SUMMARY.json").exists()


@pytest.mark.slow
def test_a_run_killed_part_way_then_rerun_leaves_one_complete_result_set(tmp_path, corpus,
                                                                        tiny_model):
    path, ids = corpus
    model = tiny_model("bert", "base")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bertbeam.cli", "embed", "--input", path, "--output", str(out),
           "--model", model, "--token-budget", "128", "--direct_num_workers=2",
           "--direct_running_mode=multi_processing"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".temp-") for p in out.glob(".*")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "_SUMMARY.json").exists(), "the killed run must not look complete"
    assert run_cli("embed", "--input", path, "--output", out, "--model", model) == 0
    assert sorted(r["id"] for r in read_output(out)) == sorted(ids)
    summary = read_summary(out)
    assert summary["accounted"] and summary["written"] == N_DOCS
