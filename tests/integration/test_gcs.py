"""gs:// for every location (input glob, output, dead letter, model, ``_SUMMARY.json``),
against a GCS JSON-API emulator on 127.0.0.1 that the tests start themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import CLASS_LABELS, SAMPLE_TEXTS
from tests.gcs_emulator import start_emulator

pytestmark = pytest.mark.gcs

BUCKET = "bertbeam-test"
GOOD_IDS = [f"doc-{i:02d}" for i in range(len(SAMPLE_TEXTS))]
BAD_ROWS = {"bad-null": None, "bad-empty": "   "}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gcs(tiny_model):
    """An emulator with a corpus (two files, good and bad rows) and two tiny models.

    Yields the gcsfs filesystem; ``STORAGE_EMULATOR_HOST`` is set for the module's tests.
    """
    import fsspec
    from fsspec.config import conf

    from bertbeam.gcs import PROTOCOLS, configure_emulator

    saved_conf = {p: dict(conf[p]) for p in PROTOCOLS if p in conf}
    saved_classes = {p: fsspec.get_filesystem_class(p) for p in PROTOCOLS}
    with start_emulator(BUCKET) as url, pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", url)
        # bertbeam was imported before the variable was set; a fresh process needs no call.
        assert configure_emulator()
        fs = fsspec.filesystem("gs")
        half = len(GOOD_IDS) // 2
        _put_parquet(fs, "corpus/part-0.parquet",
                     {"id": GOOD_IDS[:half], "text": SAMPLE_TEXTS[:half]})
        _put_parquet(fs, "corpus/part-1.parquet",
                     {"id": GOOD_IDS[half:] + list(BAD_ROWS),
                      "text": SAMPLE_TEXTS[half:] + list(BAD_ROWS.values())})
        for head in ("base", "classify"):
            fs.put(tiny_model("bert", head), f"{BUCKET}/models/bert-{head}", recursive=True)
        yield fs
        type(fs).clear_instance_cache()
    for protocol, cls in saved_classes.items():
        fsspec.register_implementation(protocol, cls, clobber=True)
        conf.pop(protocol, None)
    conf.update(saved_conf)


def _put_parquet(fs, key: str, columns: dict[str, list]) -> None:
    with fs.open(f"{BUCKET}/{key}", "wb") as f:
        pq.write_table(pa.table(columns, schema=pa.schema({"id": pa.string(), "text": pa.string()})), f)


def _gs(key: str) -> str:
    return f"gs://{BUCKET}/{key}"


def _read_back(fs, out: str) -> tuple[pa.Table, pa.Table, dict, list[str]]:
    """Results, dead letter, summary and the object names under ``out``, from the emulator."""
    from bertbeam.beam.writing import read_table

    fs.invalidate_cache()  # the listing cache predates what the pipeline wrote
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{BUCKET}/{out}"))
    summary = json.loads(fs.cat(f"{BUCKET}/{out}/_SUMMARY.json"))
    return read_table(_gs(out)), read_table(_gs(out), "dead_letter"), summary, names


def _check_accounting(results: pa.Table, dead: pa.Table, summary: dict, names: list[str]) -> None:
    assert sorted(results.column("id").to_pylist()) == GOOD_IDS  # each good id exactly once
    assert sorted(dead.column("id").to_pylist()) == sorted(BAD_ROWS)
    assert dict(zip(dead.column("id").to_pylist(), dead.column("reason").to_pylist(),
                    strict=True)) == {"bad-null": "null_text", "bad-empty": "empty_text"}
    total = len(GOOD_IDS) + len(BAD_ROWS)
    assert (summary["read"], summary["written"], summary["dead_lettered"]) == (
        total, len(GOOD_IDS), len(BAD_ROWS))
    assert summary["accounted"] is True
    assert not [n for n in names if n.startswith(".temp") or "temp-" in n], names
    assert "_SUMMARY.json" in names


def _embed_argv(out: str) -> list[str]:
    return ["embed", "--input", _gs("corpus/*.parquet"), "--output", _gs(out),
            "--model", _gs("models/bert-base"), "--device", "cpu"]


def _check_embed(fs, out: str, cache: Path) -> None:
    results, dead, summary, names = _read_back(fs, out)
    _check_accounting(results, dead, summary, names)
    assert results.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert summary["task"] == "embed" and summary["model"] == _gs("models/bert-base")
    # The model was copied from the bucket into the local cache once, completely.
    copies = [p for p in (cache / "models").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(copies) == 1
    assert (copies[0] / ".bertbeam-complete").read_text() == _gs("models/bert-base")


def test_embed_with_every_location_on_gs(gcs, tmp_path):
    """``bertbeam embed`` with input glob, output, dead letter, model and summary on gs://."""
    from bertbeam.cli import main

    cache = tmp_path / "cache"
    assert main([*_embed_argv("out/embed"), "--model-cache-dir", str(cache)]) == 0
    _check_embed(gcs, "out/embed", cache)


def test_a_fresh_process_honours_storage_emulator_host(gcs):
    """A process with nothing but STORAGE_EMULATOR_HOST in its environment reaches the
    emulator through plain, anonymous gcsfs as soon as it imports bertbeam."""
    code = (
        "import fsspec, bertbeam.beam.reading as io; "
        "print(type(fsspec.filesystem('gs')).__module__, "
        f"io.check_input({_gs('corpus/*.parquet')!r}, io.Columns()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split(" ", 1) == [
        "gcsfs.core", str([_gs("corpus/part-0.parquet"), _gs("corpus/part-1.parquet")]) + "\n"]


@pytest.mark.slow
def test_embed_cli_in_a_fresh_process(gcs, tmp_path):
    """``bertbeam embed`` exactly as users run it, in its own process."""
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "bertbeam.cli", *_embed_argv("out/embed-cli")],
        cwd=ROOT, env={**os.environ, "BERTBEAM_CACHE": str(cache)}, capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dead-lettered" in proc.stdout
    _check_embed(gcs, "out/embed-cli", cache)


def test_label_classify_with_every_location_on_gs(gcs, tmp_path):
    """``bertbeam label --task classify``: results, dead letter and summary land on gs://;
    a second run into the same directory replaces the first run's files."""
    from bertbeam.cli import main

    argv = ["label", "--task", "classify", "--input", _gs("corpus/*.parquet"),
            "--output", _gs("out/classify"), "--model", _gs("models/bert-classify"),
            "--model-cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--top-k", "3"]
    assert main(argv) == 0
    first = _read_back(gcs, "out/classify")
    assert main(argv) == 0
    results, dead, summary, names = _read_back(gcs, "out/classify")

    _check_accounting(results, dead, summary, names)
    assert names == first[3]  # same file names: rerun replaced, nothing stale left
    assert set(results.column("label").to_pylist()) <= set(CLASS_LABELS.values())
    assert all(len(labels) == 3 for labels in results.column("labels").to_pylist())
    assert summary["task"] == "classify"
    assert sum(summary["label_distribution"].values()) == len(GOOD_IDS)


def test_emulator_configuration_is_what_gcsfs_needs(gcs):
    """With STORAGE_EMULATOR_HOST set, gs:// is plain gcsfs (no gRPC bucket-layout probe),
    anonymous, and pointed at the emulator."""
    import fsspec
    from gcsfs.core import GCSFileSystem

    from bertbeam.gcs import emulator_host

    fs = fsspec.filesystem("gs")
    assert type(fs) is GCSFileSystem
    assert fs.credentials.token == "anon"
    assert fs._location == emulator_host() == os.environ["STORAGE_EMULATOR_HOST"]


def test_without_emulator_nothing_is_changed(monkeypatch):
    """No STORAGE_EMULATOR_HOST (or gcsfs's "default"): real GCS keeps gcsfs's defaults."""
    from bertbeam.gcs import configure_emulator, emulator_host

    for value in (None, "", "default"):
        if value is None:
            monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
        else:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", value)
        assert emulator_host() is None
        assert configure_emulator() is False
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9023")
    assert emulator_host() == "http://127.0.0.1:9023"


@pytest.mark.parametrize(("flag", "expected"), [
    ("--input", "matches no files"),
    ("--output", "bucket 'no-such-bucket' does not exist"),
])
def test_a_bucket_that_does_not_exist_is_refused_in_one_line(gcs, tmp_path, capsys, flag,
                                                             expected):
    from bertbeam.cli import main

    argv = _embed_argv("out/missing-bucket") + ["--model-cache-dir", str(tmp_path / "cache")]
    argv[argv.index(flag) + 1] = "gs://no-such-bucket/x/*.parquet" if flag == "--input" \
        else "gs://no-such-bucket/out"
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_the_run_lock_on_gs_is_exclusive_and_a_stale_one_is_taken_over(gcs):
    from bertbeam.run.runlock import LOCK_FILE, OutputLockedError, RunLock

    out = _gs("out/locked")
    with RunLock(out) as first:
        with pytest.raises(OutputLockedError, match="in use by run"):
            RunLock(out).acquire()
        assert first.read()["run_id"] == first.run_id
    assert not gcs.exists(f"{BUCKET}/out/locked/{LOCK_FILE}")
    gcs.pipe(f"{BUCKET}/out/locked/{LOCK_FILE}", json.dumps(
        {"run_id": "killed", "host": "elsewhere", "pid": 1,
         "heartbeat_at": "2020-01-01T00:00:00+00:00"}).encode())
    gcs.invalidate_cache()
    with RunLock(out) as taker:
        assert taker.read()["run_id"] == taker.run_id


def test_an_incremental_rerun_with_every_location_on_gs(gcs, tmp_path):
    """``--previous gs://…``: the rerun computes exactly the changed and new documents and
    equals a full recomputation, with corpus, model, outputs and earlier run on gs://."""
    from bertbeam.beam.writing import read_table
    from bertbeam.cli import main
    from tests.beam.test_incremental import assert_same_results, by_id, nightly_corpora

    yesterday, today, changes = nightly_corpora(100)
    for day, columns in (("day-1", yesterday), ("day-2", today)):
        _put_parquet(gcs, f"nightly/{day}/part-0.parquet", columns)
    common = ["--model", _gs("models/bert-base"), "--model-cache-dir", str(tmp_path / "cache"),
              "--device", "cpu", "--quiet"]

    def embed(day: str, out: str, *extra: str) -> dict:
        assert main(["embed", "--input", _gs(f"nightly/{day}/*.parquet"), "--output",
                     _gs(f"nightly/{out}"), *common, *extra]) == 0
        gcs.invalidate_cache()
        return by_id(read_table(_gs(f"nightly/{out}")).to_pylist())

    embed("day-1", "out-1")
    rerun = embed("day-2", "out-2", "--previous", _gs("nightly/out-1"))
    summary = json.loads(gcs.cat(f"{BUCKET}/nightly/out-2/_SUMMARY.json"))
    assert summary["computed"] == len(changes["changed"] | changes["new"])
    assert summary["carried_forward"] == len(rerun) - summary["computed"]
    assert summary["previous"] == [_gs("nightly/out-1")]
    assert_same_results(rerun, embed("day-2", "full"), "embed")
