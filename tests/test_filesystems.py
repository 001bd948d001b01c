"""Writing safely: a temporary file in the same directory renamed onto the target, never
through a symbolic link planted at the target (issue 27)."""

from __future__ import annotations

import json
import os

import pytest

from bertbeam.filesystems import (
    UnsafeTargetError,
    replacing,
    write_file_safely,
    write_json_atomically,
)


def test_a_symlinked_target_is_refused_and_its_target_untouched(tmp_path):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "chart.png").symlink_to(outside)
    with pytest.raises(UnsafeTargetError, match="symbolic link"):
        write_file_safely(str(out / "chart.png"), b"png")
    assert outside.read_text() == "precious"
    assert sorted(os.listdir(out)) == ["chart.png"]  # no temporary file left behind


def test_the_summary_writer_refuses_a_symlink_too(tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_SUMMARY.json").symlink_to(outside)
    with pytest.raises(UnsafeTargetError):
        write_json_atomically(str(tmp_path / "out"), "_SUMMARY.json", {"read": 1})
    assert outside.read_text() == "{}"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "rows.parquet"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(str(target)) as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["rows.parquet"]


def test_a_write_replaces_a_file_with_the_usual_permissions(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    write_json_atomically(f"file://{tmp_path}", "a.json", {"x": "é"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"x": "é"}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    write_file_safely(str(tmp_path / "b.txt"), "text")
    assert (tmp_path / "b.txt").read_text() == "text"


def test_remote_locations_are_written_whole(tmp_path):
    import fsspec

    write_file_safely("memory://rr3-safe/x.bin", b"123")
    fs = fsspec.filesystem("memory")
    assert fs.cat("/rr3-safe/x.bin") == b"123"
    assert [p["name"] for p in fs.ls("/rr3-safe")] == ["/rr3-safe/x.bin"]
