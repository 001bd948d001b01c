"""The index refuses or reports what it cannot serve faithfully (issue 27): models are told
apart by fingerprint, not path; non-finite vectors are left out with a count; duplicate ids
are refused; an index directory is published whole and files of another build, or a
truncated one, are refused in one line; ``search --json`` is strict JSON whose hit keys
carried columns cannot overwrite."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertbeam.core.fingerprint import model_fingerprint
from bertbeam.index.search import (
    MANIFEST_FILE,
    ROWS_FILE,
    VECTORS_FILE,
    Hit,
    SearchIndex,
    SearchIndexError,
    build_index,
    hits_json,
)
from tests.conftest import run_cli
from tests.index.conftest import IDS, TEXTS
from tests.search_helpers import results_table, write_results


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_the_same_checkpoint_under_a_new_path_is_one_model(tmp_path, model_dir, vectors):
    """A nightly output: carried rows name yesterday's model path, computed rows today's; the
    recorded fingerprints are equal, so the index builds (and searches with the newest path)."""
    moved = tmp_path / "models" / "minilm-v2"
    shutil.copytree(model_dir, moved)
    fp = model_fingerprint(model_dir)
    table = results_table(IDS, vectors, model_dir)
    uris = [model_dir] * 5 + [str(moved)] * (len(IDS) - 5)
    table = table.set_column(table.schema.get_field_index("model"), "model", pa.array(uris))
    table = table.append_column("model_fingerprint", pa.array([fp] * len(IDS)))
    manifest = build_index(write_results(tmp_path / "res", table), str(tmp_path / "idx"))
    assert (manifest.count, manifest.model, manifest.model_fingerprint) == (len(IDS), str(moved), fp)
    with SearchIndex.open(str(tmp_path / "idx")) as index:
        assert index.search([TEXTS[2]], k=1)[0][0].id == IDS[2]
    # Without recorded fingerprints, the paths' checkpoints are fingerprinted and compared.
    table = table.drop_columns(["model_fingerprint"])
    assert build_index(write_results(tmp_path / "res2", table), str(tmp_path / "idx2")).count == len(IDS)


def test_rows_recording_another_fingerprint_are_refused(tmp_path, model_dir, vectors, capsys):
    table = results_table(IDS, vectors, model_dir).append_column(
        "model_fingerprint", pa.array(["0123456789abcdef"] * len(IDS)))
    glob = write_results(tmp_path / "res", table)
    assert run_cli("index", "build", "--embeddings", glob, "--output", tmp_path / "idx") == 2
    assert "has changed since the embeddings were made" in _error_line(capsys)


def test_non_finite_vectors_are_left_out_and_counted(tmp_path, model_dir, vectors, capsys, caplog):
    bad = vectors.copy()
    bad[2, 3] = np.nan
    bad[5, 0] = np.inf
    glob = write_results(tmp_path / "res", results_table(IDS, bad, model_dir))
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="bertbeam.index.search"):
        assert run_cli("index", "build", "--embeddings", glob, "--output", tmp_path / "idx") == 0
    assert "2 vectors with NaN or infinite values left out" in caplog.text
    manifest = json.loads((tmp_path / "idx" / MANIFEST_FILE).read_text())
    assert (manifest["count"], manifest["skipped_non_finite"]) == (len(IDS) - 2, 2)
    ids = pq.read_table(tmp_path / "idx" / ROWS_FILE).column("id").to_pylist()
    assert ids == [i for k, i in enumerate(IDS) if k not in (2, 5)]
    with SearchIndex.open(str(tmp_path / "idx")) as index:
        hits = index.search_vectors(vectors[7], k=len(IDS))[0]
        assert hits[0].id == IDS[7] and all(np.isfinite(h.score) for h in hits)
    all_bad = np.full_like(vectors[:3], np.nan)
    glob = write_results(tmp_path / "nan", results_table(IDS[:3], all_bad, model_dir))
    assert run_cli("index", "build", "--embeddings", glob, "--output", tmp_path / "idx-nan") == 2
    assert "3 hold NaN or infinite values" in _error_line(capsys)


def test_an_id_in_two_files_is_refused_in_one_line(tmp_path, model_dir, vectors, capsys):
    res = tmp_path / "res"
    res.mkdir()
    pq.write_table(results_table(IDS[:6], vectors[:6], model_dir), res / "results-00000-of-00002.parquet")
    pq.write_table(results_table(IDS[4:], vectors[4:], model_dir), res / "results-00001-of-00002.parquet")
    assert run_cli("index", "build", "--embeddings", res / "results-*.parquet",
                   "--output", tmp_path / "idx") == 2
    err = _error_line(capsys)
    assert "'doc-04' is in the embeddings more than once" in err and "results-00001" in err
    assert not (tmp_path / "idx").exists()


@pytest.fixture()
def two_builds(tmp_path, model_dir, vectors):
    first = build_index(write_results(tmp_path / "a", results_table(IDS, vectors, model_dir)),
                        str(tmp_path / "idx-a"))
    build_index(write_results(tmp_path / "b", results_table(IDS[:7], vectors[:7] * -1, model_dir)),
                str(tmp_path / "idx-b"))
    return tmp_path / "idx-a", tmp_path / "idx-b", first


def test_files_of_another_build_are_refused(two_builds, capsys):
    a, b, _ = two_builds
    shutil.copy(b / ROWS_FILE, a / ROWS_FILE)
    assert run_cli("search", "--index", a, "anything") == 2
    assert f"{ROWS_FILE} is not the file" in _error_line(capsys)
    shutil.copy(b / ROWS_FILE, a / ROWS_FILE)
    with pytest.raises(SearchIndexError, match="another build"):
        SearchIndex.open(str(a))


def test_a_truncated_vectors_file_is_one_line(two_builds, capsys):
    a, _, manifest = two_builds
    data = (a / VECTORS_FILE).read_bytes()
    (a / VECTORS_FILE).write_bytes(data[: len(data) // 2])
    assert run_cli("search", "--index", a, "anything") == 2
    assert "truncated" in _error_line(capsys)
    # Even with a manifest that records no size (an older build), FAISS's error is one line.
    recorded = json.loads((a / MANIFEST_FILE).read_text())
    recorded.update(vectors_bytes=0, vectors_digest="", build_id="")
    (a / MANIFEST_FILE).write_text(json.dumps(recorded))
    assert run_cli("search", "--index", a, "anything") == 2
    assert "cannot be read" in _error_line(capsys)


def test_a_rebuild_replaces_the_directory_whole_and_never_writes_through_links(
        two_builds, tmp_path, model_dir, vectors, capsys):
    a, _, _ = two_builds
    outside = tmp_path / "precious.bin"
    outside.write_bytes(b"precious")
    (a / VECTORS_FILE).unlink()
    (a / VECTORS_FILE).symlink_to(outside)
    manifest = build_index(write_results(tmp_path / "c", results_table(IDS[:4], vectors[:4], model_dir)),
                           str(a))
    assert outside.read_bytes() == b"precious"
    assert not (a / VECTORS_FILE).is_symlink()
    assert sorted(p.name for p in a.iterdir()) == sorted([MANIFEST_FILE, ROWS_FILE, VECTORS_FILE])
    assert not [p for p in a.parent.iterdir() if p.name.startswith(f".{a.name}.")]
    with SearchIndex.open(str(a)) as index:
        assert index.manifest.build_id == manifest.build_id and index.manifest.count == 4
    # A directory holding anything else is not replaced.
    (a / "notes.txt").write_text("mine")
    assert run_cli("index", "build", "--embeddings", tmp_path / "c" / "results-*.parquet",
                   "--output", a) == 2
    assert "holds files other than an index (notes.txt)" in _error_line(capsys)
    assert (a / "notes.txt").read_text() == "mine"


def test_search_json_is_strict_and_carried_columns_cannot_overwrite_the_hit(tmp_path, model_dir,
                                                                            vectors, capsys):
    table = results_table(IDS, vectors, model_dir,
                          score=pa.array([float("nan")] + [0.5] * (len(IDS) - 1)),
                          rating=pa.array([float("inf")] * len(IDS)))
    build_index(write_results(tmp_path / "res", table), str(tmp_path / "idx"))
    capsys.readouterr()
    assert run_cli("search", "--index", tmp_path / "idx", "--json", "-k", "3", TEXTS[0]) == 0
    line = capsys.readouterr().out.strip()

    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    hits = json.loads(line, parse_constant=refuse)["hits"]
    assert hits[0]["id"] == IDS[0] and 0.9 < hits[0]["score"] <= 1.0001
    assert hits[0]["carried_score"] is None and hits[0]["rating"] is None
    assert {h["carried_score"] for h in hits[1:]} == {0.5}
    hit = Hit(id="x", score=0.25, columns={"id": "carried id", "score": 3.0, "carried_score": 1})
    assert json.loads(hits_json("q", [hit]))["hits"][0] == {
        "id": "x", "score": 0.25, "carried_id": "carried id", "carried_carried_score": 3.0,
        "carried_score": 1}


def test_an_output_that_cannot_be_renamed_is_replaced_file_by_file(two_builds, tmp_path,
                                                                   model_dir, vectors, monkeypatch):
    """A mount point (or a parent that cannot be written) cannot be renamed: the files are
    replaced one by one through temporary names, the manifest last."""
    import errno
    import os

    from bertbeam.index import search

    a, _, _ = two_builds
    real = os.rename

    def busy(src, dst):
        if str(src) == str(a):
            raise OSError(errno.EBUSY, "Device or resource busy", str(src))
        return real(src, dst)

    monkeypatch.setattr(search.os, "rename", busy)
    manifest = build_index(write_results(tmp_path / "c", results_table(IDS[:4], vectors[:4], model_dir)),
                           str(a))
    assert sorted(p.name for p in a.iterdir()) == sorted([MANIFEST_FILE, ROWS_FILE, VECTORS_FILE])
    assert not [p for p in a.parent.iterdir() if p.name.startswith(f".{a.name}.")]
    with SearchIndex.open(str(a)) as index:
        assert index.manifest.build_id == manifest.build_id and index.manifest.count == 4
        assert index.search_vectors(vectors[1], k=1)[0][0].id == IDS[1]
