"""Reliability round 3 (issue 27), across the layers: nothing stale or non-finite is carried
forward from ``--previous``, and nothing bertbeam writes lands outside its output directory."""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import read_output, read_summary, run_cli, write_corpus

N = 60


@pytest.fixture(scope="module")
def day1(tiny_model, tmp_path_factory) -> dict:
    """An embed run of N documents (the ``--previous`` of the tests) and a full recomputation
    to compare against."""
    from bertbeam.cli.demo import demo_texts

    root = tmp_path_factory.mktemp("round3")
    texts = [t[:300] for t in demo_texts()[:N]]
    corpus = write_corpus(root / "in" / "p.parquet", {"id": [f"d{i:03d}" for i in range(N)],
                                                      "text": texts})
    options = ["--model", tiny_model("bert", "base"), "--quiet", "--no-report"]
    assert run_cli("embed", "--input", corpus, "--output", root / "day-1", *options) == 0
    expected = {r["id"]: np.asarray(r["embedding"]) for r in read_output(root / "day-1")}
    return {"root": root, "corpus": corpus, "options": options, "expected": expected}


def _copy_run(day1: dict, tmp_path: Path) -> Path:
    previous = tmp_path / "previous"
    shutil.copytree(day1["root"] / "day-1", previous)
    return previous


def _rerun(day1: dict, previous: Path, out: Path) -> dict:
    assert run_cli("embed", "--input", day1["corpus"], "--output", out, *day1["options"],
                   "--previous", previous) == 0
    rows = {r["id"]: np.asarray(r["embedding"]) for r in read_output(out)}
    assert sorted(rows) == sorted(day1["expected"])
    for doc_id, vector in rows.items():
        assert np.isfinite(vector).all(), doc_id
        np.testing.assert_allclose(vector, day1["expected"][doc_id], atol=1e-5, rtol=0)
    return read_summary(out)


def test_a_corrupt_data_page_of_a_previous_run_is_not_carried_forward(day1, tmp_path):
    """Bytes flipped inside the embedding column's data: that row group's documents are
    computed again (page checksums), never carried with garbage vectors."""
    previous = _copy_run(day1, tmp_path)
    [results] = glob.glob(str(previous / "results-*.parquet"))
    meta = pq.ParquetFile(results).metadata
    column = next(i for i in range(meta.num_columns)
                  if meta.schema.column(i).path.startswith("embedding"))
    chunk = meta.row_group(0).column(column)
    start = chunk.data_page_offset
    data = bytearray(Path(results).read_bytes())
    middle = start + chunk.total_compressed_size // 2
    for i in range(middle, middle + 64):
        data[i] ^= 0x5A
    Path(results).write_bytes(bytes(data))
    summary = _rerun(day1, previous, tmp_path / "out")
    assert summary["computed"] >= meta.row_group(0).num_rows
    assert summary["computed"] + summary["carried_forward"] == N


def test_non_finite_values_in_a_previous_run_are_recomputed(day1, tmp_path):
    """A previous file (say of an older bertbeam, without page checksums) whose rows hold NaN
    or inf: those rows are computed again, the others carried."""
    previous = _copy_run(day1, tmp_path)
    [results] = glob.glob(str(previous / "results-*.parquet"))
    table = pq.read_table(results)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    vectors[3, 5] = np.nan
    vectors[7, 0] = np.inf
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    table = table.set_column(table.schema.get_field_index("embedding"),
                             table.schema.field("embedding"), embedding)
    pq.write_table(table, results, compression="zstd")
    summary = _rerun(day1, previous, tmp_path / "out")
    assert (summary["computed"], summary["carried_forward"]) == (2, N - 2)


def test_a_nan_in_a_carried_input_column_is_the_inputs_and_still_carried(tiny_model, tmp_path):
    """NaN in a column carried from the input is the input's own value (the text fingerprint
    covers it), not damage: those rows are carried forward like any other."""
    ids = [f"p{i}" for i in range(12)]
    price = [float("nan") if i % 3 == 0 else float(i) for i in range(12)]
    corpus = write_corpus(tmp_path / "in" / "p.parquet",
                          {"id": ids, "text": [f"text number {i}" for i in range(12)], "price": price})
    options = ["--model", tiny_model("bert", "base"), "--quiet", "--no-report",
               "--carry-columns", "price", "--input", corpus]
    assert run_cli("embed", "--output", tmp_path / "day-1", *options) == 0
    assert run_cli("embed", "--output", tmp_path / "day-2", *options,
                   "--previous", tmp_path / "day-1") == 0
    summary = read_summary(tmp_path / "day-2")
    assert (summary["computed"], summary["carried_forward"]) == (0, 12)
    rows = {r["id"]: r for r in read_output(tmp_path / "day-2")}
    assert [np.isnan(rows[i]["price"]) for i in ids] == [np.isnan(p) for p in price]


def test_the_report_does_not_write_through_a_planted_link(day1, tmp_path, capsys):
    """A symlink planted in the output where a report PNG or the page goes: refused in one
    line, the file it points at untouched."""
    out = _copy_run(day1, tmp_path)
    outside = tmp_path / "precious.txt"
    for name in ("_REPORT-tokens.png", "_REPORT.html"):
        outside.write_text("precious")
        for old in out.glob("_REPORT*"):
            old.unlink()
        (out / name).symlink_to(outside)
        capsys.readouterr()
        assert run_cli("report", out) == 2, name
        err = capsys.readouterr().err.strip()
        assert "symbolic link" in err and len(err.splitlines()) == 1, err
        assert outside.read_text() == "precious"
