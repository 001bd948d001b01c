"""Nothing lost, nothing duplicated: every input row ends in results or dead letter, once,
with a reason code for each bad row."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.conftest import read_output, read_summary, run_cli, write_corpus

GOOD = 1000


def _hostile_rows() -> list[tuple[object, object, str | None]]:
    """(id, text, expected reason or None for a good row)."""
    big = ("All work and no play makes Jack a dull boy. " * 120_000)[:5_000_000]
    return [
        ("h-null", None, "null_text"),
        ("h-empty", "", "empty_text"),
        ("h-space", "  \t\n  ", "empty_text"),
        ("h-control", "\x00\x01\x02\x7f", "empty_text"),
        ("h-invalid-utf8", b"caf\xc3(", "invalid_utf8"),
        ("h-surrogate", b"\xed\xa0\x80 lone surrogate", "invalid_utf8"),
        ("h-emoji", "emoji 🙂🚀 and CJK 漢字かな, RTL مرحبا بالعالم and עברית mixed", None),
        ("h-huge", big, None),
        (None, "a row without an id", "missing_id"),
        ("", "a row with a blank id", "missing_id"),
        ("g-0", "this duplicate of g-0 comes later in the file", "duplicate_id"),
    ]


@pytest.fixture(scope="module")
def hostile_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    from bertbeam.cli.demo import demo_texts

    texts = demo_texts()
    good_ids = [f"g-{i}" for i in range(GOOD)]
    good_texts = [texts[i % len(texts)][:400] for i in range(GOOD)]
    hostile = _hostile_rows()
    ids = good_ids + [h[0] for h in hostile]
    values = [t.encode() for t in good_texts] + [
        h[1].encode() if isinstance(h[1], str) else h[1] for h in hostile]
    # A binary text column lets invalid UTF-8 reach the reader, as it does in real data.
    write_corpus(root / "in" / "a.parquet",
                 {"id": pa.array(ids, pa.string()), "text": pa.array(values, pa.binary())},
                 row_group_size=300)
    # A file whose text column has the wrong type: every row is dead-lettered, not crashed on.
    write_corpus(root / "in" / "b.parquet", {"id": ["w-1", "w-2"], "text": [1, 2]})
    # A truncated file among good ones: reported, the others still processed.
    good = (root / "in" / "a.parquet").read_bytes()
    (root / "in" / "c.parquet").write_bytes(good[: len(good) // 3])
    expected = {i: None for i in good_ids}
    expected.update({h[0]: h[2] for h in hostile if h[0] and h[0] != "g-0"})
    expected.update({"w-1": "not_a_string", "w-2": "not_a_string"})
    return str(root / "in" / "*.parquet"), expected


JOBS = {
    "embed": (("embed",), "base"),
    "classify": (("label", "--task", "classify"), "classify"),
}


@pytest.mark.parametrize(("job", "runner"), [
    pytest.param("embed", (), id="embed-local"),
    pytest.param("classify", (), id="classify-local"),
    pytest.param("embed", ("--direct_num_workers=2", "--direct_running_mode=multi_processing"),
                 marks=pytest.mark.slow, id="embed-multi_processing"),
    pytest.param("classify", ("--direct_num_workers=2", "--direct_running_mode=multi_processing"),
                 marks=pytest.mark.slow, id="classify-multi_processing"),
])
def test_every_row_accounted_for_once_with_its_reason(tmp_path, hostile_corpus, tiny_model, job,
                                                      runner):
    pattern, expected = hostile_corpus
    command, head = JOBS[job]
    code = run_cli(*command, "--input", pattern, "--output", tmp_path, "--model",
                   tiny_model("bert", head), "--token-budget", "4096",
                   "--max-dead-letter-fraction", "1", *runner)  # a corpus of bad rows
    assert code == 0
    results = read_output(tmp_path)
    dead = read_output(tmp_path, "dead_letter")
    result_ids = [r["id"] for r in results]
    assert len(result_ids) == len(set(result_ids)), "a row was written twice"
    assert set(result_ids) == {i for i, reason in expected.items() if reason is None}
    by_reason: dict[str, list] = {}
    for row in dead:
        by_reason.setdefault(row["reason"], []).append(row["id"])
    for doc_id, reason in expected.items():
        if reason is not None and doc_id not in ("", None):
            assert doc_id in by_reason.get(reason, []), (doc_id, reason, by_reason.keys())
    assert len(by_reason["missing_id"]) == 2
    assert by_reason["duplicate_id"] == ["g-0"]
    assert by_reason["unreadable_file"], "the truncated file must be reported"
    assert all(len(r["preview"]) <= 200 for r in dead)
    summary = read_summary(tmp_path)
    assert summary["accounted"] is True
    assert summary["read"] == summary["written"] + summary["dead_lettered"]
    assert summary["written"] == len(results) and summary["dead_lettered"] == len(dead)
    huge = next(r for r in results if r["id"] == "h-huge")
    assert huge["n_chunks"] > 100 and huge["truncated"] is False


def test_missing_input_fails_before_the_pipeline(tmp_path, capsys):
    code = run_cli("embed", "--input", tmp_path / "nothing-*.parquet", "--output", tmp_path / "o")
    assert code == 2
    assert "matches no files" in capsys.readouterr().err


def test_missing_column_fails_before_the_pipeline(tmp_path, capsys):
    path = write_corpus(tmp_path / "x.parquet", {"key": ["a"], "text": ["hello"]})
    assert run_cli("embed", "--input", path, "--output", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "no column 'id'" in err and "key" in err


def test_unknown_flag_is_an_error_not_a_warning(tmp_path, capsys):
    path = write_corpus(tmp_path / "x.parquet", {"id": ["a"], "text": ["hello"]})
    assert run_cli("embed", "--input", path, "--output", tmp_path / "o", "--token-budgte=9") == 2
    assert "--token-budgte" in capsys.readouterr().err


def test_model_without_weights_fails_before_the_pipeline(tmp_path, tiny_model, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model("bert", "base"), broken)
    for f in broken.glob("*.safetensors"):
        f.unlink()
    path = write_corpus(tmp_path / "x.parquet", {"id": ["a"], "text": ["hello"]})
    assert run_cli("embed", "--input", path, "--output", tmp_path / "o", "--model", broken) == 2
    assert "no weights" in capsys.readouterr().err


# -- hostile columns: every row a result or a dead letter, never a crash ---------------------------


def _unchecked_strings(values: list[bytes]) -> pa.Array:
    """A string array holding bytes as they are (invalid UTF-8 included), as a careless
    writer produces them: Arrow validates nothing when built from buffers."""
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())


@pytest.fixture(scope="module")
def hostile_columns_run(tmp_path_factory, tiny_model):
    """One embed run over files whose columns are hostile in kind, not in value."""
    import datetime as dt

    root = tmp_path_factory.mktemp("hostile-columns")
    src = root / "in"
    write_corpus(src / "a-good.parquet", {"id": ["g1", "g2"], "text": ["hello there", "a cat"]})
    write_corpus(src / "b-binary-ids.parquet", {
        "id": pa.array([b"i1", b"i2", b"\xff\xfe"], pa.binary()),
        "text": ["binary id one", "binary id two", "an id that is not UTF-8"]})
    write_corpus(src / "c-float-ids.parquet", {"id": [1.5, float("nan")], "text": ["x y", "nan id"]})
    # Later files of the glob without the text column, or without the id column.
    write_corpus(src / "d-drift-text.parquet", {"id": ["d1", "d2"], "body": ["no", "text"]})
    write_corpus(src / "e-drift-id.parquet", {"key": ["e1"], "text": ["no id column"]})
    dictionary = pa.DictionaryArray.from_arrays(
        pa.array([0, 1, 0], pa.int32()), _unchecked_strings([b"fine text", b"bad \xff byte"]))
    write_corpus(src / "f-dictionary.parquet", {"id": ["f1", "f2", "f3"], "text": dictionary})
    write_corpus(src / "g-bad-string-id.parquet", {
        "id": _unchecked_strings([b"ok-id", b"bad\xffid"]), "text": ["fine", "bad id"]})
    dates = pa.array([dt.date(2024, 1, 1).toordinal() - 719163, 2**31 - 1], pa.date32())
    write_corpus(src / "h-date-text.parquet", {"id": ["h1", "h2"], "text": dates})
    code = run_cli("embed", "--input", src / "*.parquet", "--output", root / "out",
                   "--model", tiny_model("bert", "base"), "--max-dead-letter-fraction", "1")
    assert code == 0
    out = root / "out"
    dead = {}
    for row in read_output(out, "dead_letter"):
        dead.setdefault(row["reason"], []).append(row["id"])
    return [r["id"] for r in read_output(out)], dead, read_summary(out)


def test_hostile_columns_keep_the_accounting(hostile_columns_run):
    results, dead, summary = hostile_columns_run
    assert summary["read"] == 17
    assert summary["accounted"] is True
    assert summary["written"] + summary["dead_lettered"] == summary["read"]
    assert len(results) == len(set(results))


def test_binary_ids_are_decoded_and_invalid_ones_dead_lettered(hostile_columns_run):
    """A binary id column joins back to the input: ``i1``, never ``b'i1'``."""
    results, dead, _ = hostile_columns_run
    assert {"i1", "i2"} <= set(results)
    assert not [r for r in results if r.startswith("b'")]
    assert None in dead["invalid_utf8"]


def test_a_nan_id_is_a_missing_id_not_the_id_nan(hostile_columns_run):
    results, dead, _ = hostile_columns_run
    assert "1.5" in results and "nan" not in results
    assert None in dead["missing_id"]


def test_a_later_file_without_the_columns_is_dead_lettered_per_row(hostile_columns_run):
    results, dead, _ = hostile_columns_run
    assert sorted(dead["missing_column"], key=str) == [None, "d1", "d2"]


def test_unconvertible_values_are_dead_lettered_per_row(hostile_columns_run):
    """A dictionary-encoded text with one invalid UTF-8 value, a string id with invalid
    UTF-8, an out-of-range date32 text: each its own row's dead letter."""
    results, dead, _ = hostile_columns_run
    assert {"f1", "f3", "ok-id"} <= set(results)
    assert "f2" in dead["invalid_utf8"]
    assert dead["invalid_utf8"].count(None) == 2  # the binary id and the string id
    assert sorted(dead["not_a_string"]) == ["h1", "h2"]
