"""Incremental runs (``--previous``): unchanged documents are carried forward, changed and new
ones computed, removed ones gone; the result equals a full recomputation."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import read_output, read_summary, run_cli, write_corpus

ROOT = Path(__file__).resolve().parents[2]
N_DOCS = 200


def nightly_corpora(n: int = N_DOCS) -> tuple[dict, dict, dict[str, set[str]]]:
    """Yesterday's and today's corpus: today 5% of the texts changed, 2% new rows, 1% of the
    rows removed. Returns (yesterday, today, {"changed", "new", "removed"} ids)."""
    from bertbeam.cli.demo import demo_texts

    texts = [t[:400] for t in demo_texts()[: n + n // 50]]
    ids = [f"doc-{i:05d}" for i in range(n)]
    yesterday = {"id": ids, "text": texts[:n]}
    rng = np.random.default_rng(7)
    picked = rng.permutation(n)
    changed = {ids[i] for i in picked[: n // 20]}
    removed = {ids[i] for i in picked[n // 20: n // 20 + n // 100]}
    new = [f"new-{i:05d}" for i in range(n // 50)]
    today_ids = [i for i in ids if i not in removed] + new
    by_id = dict(zip(ids, texts[:n], strict=True))
    today_texts = [f"{by_id[i]} (edited)" if i in changed else by_id[i] for i in ids if i not in removed]
    today = {"id": today_ids, "text": today_texts + texts[n: n + len(new)]}
    return yesterday, today, {"changed": changed, "new": set(new), "removed": removed}


def write_nightly_corpora(root: Path, n: int = N_DOCS) -> tuple[str, str, dict[str, set[str]]]:
    yesterday, today, changes = nightly_corpora(n)
    return (write_corpus(root / "day-1" / "part-0.parquet", yesterday, row_group_size=50),
            write_corpus(root / "day-2" / "part-0.parquet", today, row_group_size=50), changes)


def by_id(rows: list[dict]) -> dict[str, dict]:
    out = {r["id"]: r for r in rows}
    assert len(out) == len(rows), "an id was written twice"
    return out


def assert_same_results(rerun: dict[str, dict], full: dict[str, dict], task: str) -> None:
    """The incremental rerun equals the full recomputation: ids, and labels or embeddings."""
    assert sorted(rerun) == sorted(full)
    for doc_id, row in rerun.items():
        expected = full[doc_id]
        assert row["text_fingerprint"] == expected["text_fingerprint"], doc_id
        assert row["job_fingerprint"] == expected["job_fingerprint"], doc_id
        if task == "embed":
            np.testing.assert_allclose(row["embedding"], expected["embedding"], atol=1e-6, rtol=0)
        else:
            assert row["label"] == expected["label"], doc_id
            assert abs(row["score"] - expected["score"]) < 1e-5, doc_id


def _spy_on_the_model(monkeypatch) -> list[str]:
    """Ids of the documents the engine encodes (the first step of the model path)."""
    from bertbeam.beam.incremental import _unkey
    from bertbeam.core import engine

    seen: list[str] = []
    original = engine.Engine.encode

    def encode(self, docs):
        seen.extend(_unkey(doc_id)[0] for doc_id in docs.ids)
        return original(self, docs)

    monkeypatch.setattr(engine.Engine, "encode", encode)
    return seen


def test_a_rerun_computes_only_changed_and_new_documents(tmp_path, tiny_model, monkeypatch):
    """Day 2 with ``--previous`` day 1: exactly the changed and new documents go through the
    model (counted in the summary too), removed ones are gone, unchanged rows are day 1's
    rows, and the whole equals a full recomputation of day 2."""
    day1, day2, changes = write_nightly_corpora(tmp_path)
    model = ["--model", tiny_model("bert", "base"), "--token-budget", "1024", "--quiet"]
    assert run_cli("embed", "--input", day1, "--output", tmp_path / "out-1", *model) == 0
    seen = _spy_on_the_model(monkeypatch)
    assert run_cli("embed", "--input", day2, "--output", tmp_path / "out-2",
                   "--previous", tmp_path / "out-1", *model) == 0
    assert sorted(seen) == sorted(changes["changed"] | changes["new"])
    summary = read_summary(tmp_path / "out-2")
    n_today = N_DOCS - len(changes["removed"]) + len(changes["new"])
    assert (summary["read"], summary["computed"], summary["carried_forward"],
            summary["dead_lettered"], summary["accounted"]) == (
        n_today, len(seen), n_today - len(seen), 0, True)
    assert summary["windows"] == len(seen)  # every text fits one window

    yesterday = by_id(read_output(tmp_path / "out-1"))
    rerun = by_id(read_output(tmp_path / "out-2"))
    assert not set(rerun) & changes["removed"]
    for doc_id in set(rerun) - changes["changed"] - changes["new"]:
        assert rerun[doc_id]["run_id"] == yesterday[doc_id]["run_id"]  # carried unchanged
        assert np.array_equal(rerun[doc_id]["embedding"], yesterday[doc_id]["embedding"])
    run_ids = {r["run_id"] for r in rerun.values()}
    assert run_ids == {summary["run_id"], read_summary(tmp_path / "out-1")["run_id"]}

    assert run_cli("embed", "--input", day2, "--output", tmp_path / "full", *model) == 0
    assert_same_results(rerun, by_id(read_output(tmp_path / "full")), "embed")


def test_a_previous_run_of_another_job_carries_nothing(tmp_path, tiny_model, caplog):
    """Another option that changes results (here the window length) changes the job
    fingerprint: everything is computed again, and one log line says why."""
    day1, _, _ = write_nightly_corpora(tmp_path, n=40)
    model = ["--model", tiny_model("bert", "base"), "--quiet"]
    assert run_cli("embed", "--input", day1, "--output", tmp_path / "out-1", *model) == 0
    with caplog.at_level(logging.WARNING, logger="bertbeam"):
        assert run_cli("embed", "--input", day1, "--output", tmp_path / "out-2", *model,
                       "--max-length", "64", "--previous", tmp_path / "out-1",
                       "--log-level", "warning") == 0
    lines = [r.getMessage() for r in caplog.records if "Nothing carried forward" in r.getMessage()]
    assert len(lines) == 1 and "job fingerprint" in lines[0]
    summary = read_summary(tmp_path / "out-2")
    assert (summary["computed"], summary["carried_forward"]) == (40, 0)
    # The same options again: everything carried.
    assert run_cli("embed", "--input", day1, "--output", tmp_path / "out-3", *model,
                   "--max-length", "64", "--previous", tmp_path / "out-2") == 0
    assert read_summary(tmp_path / "out-3")["carried_forward"] == 40


def test_a_previous_location_without_results_is_an_error(tmp_path, tiny_model, capsys):
    day1, _, _ = write_nightly_corpora(tmp_path, n=10)
    code = run_cli("embed", "--input", day1, "--output", tmp_path / "out", "--model",
                   tiny_model("bert", "base"), "--previous", tmp_path / "nothing-here")
    assert code == 2
    assert "--previous" in capsys.readouterr().err


@pytest.mark.slow
def test_a_rerun_under_multi_processing_equals_a_full_recomputation(tmp_path, tiny_model):
    """The same with two worker processes and a classifier: labels equal a full run's."""
    day1, day2, changes = write_nightly_corpora(tmp_path)
    common = ["--model", tiny_model("bert", "classify"), "--quiet", "--direct_num_workers=2",
              "--direct_running_mode=multi_processing"]
    label = ["label", "--task", "classify"]
    assert run_cli(*label, "--input", day1, "--output", tmp_path / "out-1", *common) == 0
    assert run_cli(*label, "--input", day2, "--output", tmp_path / "out-2", *common,
                   "--previous", tmp_path / "out-1") == 0
    summary = read_summary(tmp_path / "out-2")
    assert summary["computed"] == len(changes["changed"] | changes["new"])
    assert summary["windows"] == summary["computed"]
    assert run_cli(*label, "--input", day2, "--output", tmp_path / "full", *common) == 0
    assert_same_results(by_id(read_output(tmp_path / "out-2")),
                        by_id(read_output(tmp_path / "full")), "classify")


@pytest.mark.slow
def test_a_rerun_killed_part_way_then_rerun_yields_each_id_once(tmp_path, tiny_model):
    """A ``--previous`` run killed mid-way and started again leaves each id exactly once."""
    day1, day2, _ = write_nightly_corpora(tmp_path, n=400)
    model = ["--model", tiny_model("bert", "base"), "--token-budget", "128"]
    assert run_cli("embed", "--input", day1, "--output", tmp_path / "out-1", *model) == 0
    out = tmp_path / "out-2"
    argv = ["embed", "--input", day2, "--output", str(out), "--previous", str(tmp_path / "out-1"),
            *model, "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    proc = subprocess.Popen([sys.executable, "-m", "bertbeam.cli", *argv], cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Killed once the writes begin: temporary shards, or final files before the summary (the
    # temporary directory lives a fraction of a second, so the poll is fast).
    deadline = time.time() + 300
    while time.time() < deadline and not any(
            p.name.startswith((".temp-", "results-")) for p in (out.iterdir() if out.exists() else ())):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "_SUMMARY.json").exists()
    assert run_cli(*argv[:-2]) == 0
    ids = [r["id"] for r in read_output(out)]
    assert len(ids) == len(set(ids)) == read_summary(out)["read"]


def test_keys_carry_any_id_and_the_text_fingerprint_back():
    from bertbeam.beam.incremental import _keyed, _unkey
    from bertbeam.core.records import Document

    for doc_id in ("a", "with\x1fseparator\x1f", "", "ünï 🙂"):
        keyed = _keyed(Document(id=doc_id, text="some text"))
        assert _unkey(keyed.id)[0] == doc_id


def test_a_chunk_is_keyed_as_its_documents_are():
    """KeyByText on a chunk (its one-loop path for texts alone, and with carried columns)
    gives each document the key KeyByText gives it alone."""
    from bertbeam.beam.incremental import _keyed, _keyed_chunk
    from bertbeam.core.records import DocumentChunk

    ids, texts = ["a", "with\x1fseparator", "ünï"], ["one", "", "drei ✓"]
    for extra in (None, {"title": ["t1", None, "t3"]}):
        chunk = DocumentChunk(ids, texts, extra=extra)
        assert _keyed_chunk(chunk).ids == [_keyed(chunk.document(i)).id for i in range(3)]


def test_fingerprints():
    """Text fingerprints cover every input column; the job fingerprint changes with what
    changes results, not with batching."""
    from bertbeam.config import BatchSpec, ModelSpec, RunSpec, TokenizeSpec
    from bertbeam.core.fingerprint import job_fingerprint, text_fingerprint
    from bertbeam.tasks.classify import ClassifyTask

    assert text_fingerprint("ab", "c") != text_fingerprint("a", "bc") != text_fingerprint("abc")
    assert len(text_fingerprint("x")) == 32
    base = job_fingerprint(ClassifyTask(), RunSpec(), "f1")
    assert job_fingerprint(ClassifyTask(), RunSpec(batch=BatchSpec(token_budget=99)),
                           "f1") == base
    assert job_fingerprint(ClassifyTask(), RunSpec(model=ModelSpec(num_threads=3)),
                           "f1") == base
    for changed in (job_fingerprint(ClassifyTask(top_k=2), RunSpec(), "f1"),
                    job_fingerprint(ClassifyTask(), RunSpec(), "f2"),
                    job_fingerprint(ClassifyTask(), RunSpec(tokenize=TokenizeSpec(max_length=64)),
                                    "f1"),
                    job_fingerprint(ClassifyTask(), RunSpec(model=ModelSpec(dtype="bfloat16")),
                                    "f1")):
        assert changed != base


def test_model_fingerprint_follows_the_files_or_the_hub_revision(tmp_path):
    from bertbeam.core.fingerprint import model_fingerprint

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    (model / ".bertbeam-complete").write_text("marker")
    first = model_fingerprint(str(model))
    assert len(first) == 16 and int(first, 16) >= 0
    (model / ".bertbeam-complete").write_text("another marker")  # hidden files don't count
    assert model_fingerprint(str(model)) == first
    (model / "model.safetensors").write_bytes(b"other weights")
    assert model_fingerprint(str(model)) != first
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--org--m" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    assert model_fingerprint(str(snapshot)) == f"rev:{commit}"


def test_a_hub_model_pinned_with_at_revision(monkeypatch, tmp_path):
    """``org/model@REVISION`` asks the hub for that revision."""
    import huggingface_hub

    from bertbeam.core.models import resolve_model_dir, split_revision

    asked = {}

    def snapshot_download(name, *, revision=None, **kwargs):
        asked.update(name=name, revision=revision)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert resolve_model_dir("org/model@v1.2") == str(tmp_path)
    assert asked == {"name": "org/model", "revision": "v1.2"}
    assert split_revision("org/model") == ("org/model", None)
    assert split_revision("gs://b/m@x") == ("gs://b/m@x", None)


def test_only_the_join_with_previous_runs_shuffles_documents(tmp_path, tiny_model):
    """Without --previous, documents stream from the read to the write with no shuffle (the
    grouping steps are ReadDocuments' id pass and WriteResults' commit); with it, the join by
    id is the one added."""
    import apache_beam as beam
    from apache_beam.portability import common_urns

    from bertbeam.cli import embed
    from bertbeam.run import job as common

    day1, _, _ = write_nightly_corpora(tmp_path, n=10)
    model = ["--model", tiny_model("bert", "base"), "--quiet"]
    assert run_cli("embed", "--input", day1, "--output", tmp_path / "out-1", *model) == 0

    def grouping_steps(*extra: str) -> set[str]:
        job, _ = embed.make_job(["--input", day1, "--output", str(tmp_path / "out"), *model, *extra])
        p = beam.Pipeline()
        common.build(p, job, common.preflight(job))
        gbk = common_urns.primitives.GROUP_BY_KEY.urn
        return {t.unique_name.split("/")[0] + "/" + t.unique_name.split("/")[1]
                for t in p.to_runner_api().components.transforms.values() if t.spec.urn == gbk}

    without = grouping_steps()
    assert {name.split("/")[0] for name in without} == {"ReadDocuments", "WriteResults",
                                                        "WriteDeadLetter"}
    assert grouping_steps("--previous", str(tmp_path / "out-1")) - without == {
        "JoinPrevious/JoinById", "JoinPrevious/SpreadPreviousRowGroups"}


def test_the_join_keeps_the_first_location_that_has_the_unchanged_row():
    """Per id: an unchanged text takes the earliest --previous location's row (rows left twice
    by a killed run count once); a changed text is computed; a removed id yields its id on
    the removed output."""
    from bertbeam.beam.incremental import CARRIED, REMOVED, TEXT_FP, _ChooseFn
    from bertbeam.core.fingerprint import text_fingerprint
    from bertbeam.core.records import Document

    fp = text_fingerprint("same text")
    first, second = {"id": "a", TEXT_FP: fp, "n": 0}, {"id": "a", TEXT_FP: fp, "n": 1}
    stale = {"id": "a", TEXT_FP: text_fingerprint("old text"), "n": 2}
    doc = Document(id="a", text="same text")
    out = list(_ChooseFn().process(("a", {"documents": [doc],
                                          "previous": [(1, second), (2, stale), (0, first),
                                                       (1, second)]})))
    assert [(o.tag, o.value) for o in out] == [(CARRIED, first)]
    changed = Document(id="a", text="new text")
    assert list(_ChooseFn().process(("a", {"documents": [changed], "previous": [(0, first)]}))) == [
        changed]
    gone = list(_ChooseFn().process(("a", {"documents": [], "previous": [(0, first)]})))
    assert [(o.tag, o.value) for o in gone] == [(REMOVED, "a")]  # a --sink deletes it
