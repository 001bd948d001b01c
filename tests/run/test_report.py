"""The run report: ``_REPORT.html`` renders every panel in a real browser; labels that moved
since the previous run are flagged; ``bertbeam report`` and the job write it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bertbeam.run.report import PANELS, REPORT_FILE, panels_for
from tests.conftest import SAMPLE_TEXTS, read_summary, run_cli, write_corpus

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--hide-scrollbars"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium with apt-get)")


def screenshot(page: Path, png: Path, tmp_path: Path, size: str = "1400,2400") -> np.ndarray:
    """The page as headless Chromium draws it, as an RGB array."""
    from PIL import Image

    proc = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}",
         f"--window-size={size}", f"--screenshot={png}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert png.exists(), proc.stderr[-2000:]
    return np.asarray(Image.open(png).convert("RGB"))


def panel_pixels(image: np.ndarray, key: str) -> int:
    """Pixels of ``key``'s frame colour: only its figure (or table) has that colour."""
    rgb = tuple(int(PANELS[key][1][i:i + 2], 16) for i in (1, 3, 5))
    return int((image == rgb).all(axis=-1).sum())


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """A classify run, a rerun with more negative texts and ``--previous``, and an embed run."""
    root = tmp_path_factory.mktemp("report")
    ids = [f"d{i}" for i in range(len(SAMPLE_TEXTS) + 1)]
    day1 = write_corpus(root / "in-1" / "p.parquet", {"id": ids, "text": [*SAMPLE_TEXTS, None]})
    day2 = write_corpus(root / "in-2" / "p.parquet",
                        {"id": ids, "text": [*SAMPLE_TEXTS[:5], *["short"] * 5, None]})
    classify = ["label", "--task", "classify", "--model", tiny_model("bert", "classify"), "--quiet"]
    out = {"day-1": root / "day-1", "day-2": root / "day-2", "embed": root / "embed"}
    assert run_cli(*classify, "--input", day1, "--output", out["day-1"]) == 0
    assert run_cli(*classify, "--input", day2, "--output", out["day-2"],
                   "--previous", out["day-1"]) == 0
    assert run_cli("embed", "--model", tiny_model("bert", "base"), "--quiet", "--input", day1,
                   "--output", out["embed"]) == 0
    return out


@pytest.mark.parametrize("run", ["day-2", "embed"])
def test_every_panel_renders_in_headless_chromium(runs, run, tmp_path):
    """The job's own _REPORT.html, opened in Chromium: each panel's figure is on screen."""
    page = runs[run] / REPORT_FILE
    image = screenshot(page, tmp_path / f"{run}.png", tmp_path)
    task = read_summary(runs[run])["task"]
    expected = panels_for(task)
    assert set(expected) >= ({"labels", "scores"} if task == "classify" else {"norms", "neighbours"})
    shown = {key: panel_pixels(image, key) for key in expected}
    assert all(n > 2000 for n in shown.values()), shown
    absent = {key: panel_pixels(image, key) for key in set(PANELS) - set(expected)}
    assert not any(absent.values()), absent
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    assert html.count("data:image/png;base64,") == len([k for k in expected if k != "neighbours"])
    for key in expected:
        if key != "neighbours":
            assert (runs[run] / f"_REPORT-{key}.png").exists()


def test_labels_that_moved_are_flagged():
    from bertbeam.run.report import _labels

    before = {"label_distribution": {"positive": 50, "negative": 45, "neutral": 5}}
    now = {"label_distribution": {"positive": 80, "negative": 16, "neutral": 4}}
    panel = _labels(now, before, threshold=0.05)
    assert panel.png is not None
    assert panel.note == "Flagged (moved more than 5 percentage points): positive, negative."
    assert "No label moved" in _labels(now, now, threshold=0.05).note
    assert "No previous run" in _labels(now, None, threshold=0.05).note


def test_report_command_and_no_report(runs, tiny_model, tmp_path, capsys):
    """``bertbeam report`` rewrites a run's report (here against its previous run);
    ``--no-report`` leaves none; a directory without a summary is exit status 2."""
    (runs["day-1"] / REPORT_FILE).unlink()
    assert run_cli("report", runs["day-1"]) == 0
    assert (runs["day-1"] / REPORT_FILE).exists()
    assert run_cli("report", runs["day-2"], "--previous", runs["day-1"]) == 0
    assert "previous run" in (runs["day-2"] / REPORT_FILE).read_text()
    assert run_cli("report", tmp_path) == 2
    assert "cannot write the report" in capsys.readouterr().err
    corpus = write_corpus(tmp_path / "in" / "p.parquet", {"id": ["a"], "text": ["hello"]})
    assert run_cli("embed", "--model", tiny_model("bert", "base"), "--quiet", "--no-report",
                   "--input", corpus, "--output", tmp_path / "out") == 0
    assert not list((tmp_path / "out").glob("_REPORT*"))


def test_throughput_shows_documents_read_before_the_first_is_done():
    """The batcher holds the first windows back, so the first documents are done seconds into
    the run: the panel plots the documents read beside those done and says when the first were
    done. Samples without a read count (older runs) still plot."""
    from bertbeam.run.report import _throughput

    samples = [[0.0, 0, 0, 0, 0], [2.0, 0, 0, 0, 900], [4.0, 0, 800, 0, 2000],
               [6.0, 300, 1500, 0, 2000], [8.0, 2000, 6000, 0, 2000]]
    panel = _throughput({"throughput": [row[:4] for row in samples],
                         "throughput_read": [row[4] for row in samples]})
    assert panel.png is not None
    assert panel.note.startswith("2000 documents in 8.0 s (250.0 documents/s on average).")
    assert "The first were done at 6.0 s" in panel.note and "dashed: documents read" in panel.note
    old = _throughput({"throughput": [row[:4] for row in samples]})
    assert old.png is not None and "first were done" not in old.note
    empty = _throughput({"throughput": []})  # a figure that says there are no samples
    assert empty.png is not None and empty.note == ""


def test_tokens_per_document_bins_are_even_on_a_log_axis():
    """Tokens per document span orders of magnitude (a title, a chapter): the histogram's x
    axis is logarithmic, its bins of equal width on it, from the shortest to the longest."""
    from bertbeam.run.report import log_bins

    edges = log_bins(np.array([3, 10, 40, 500, 12000]))
    assert edges[0] == 3 and edges[-1] == pytest.approx(12000) and len(edges) == 41
    assert np.allclose(np.diff(np.log(edges)), np.log(12000 / 3) / 40)
    assert log_bins(np.array([7, 7])).tolist() == [7 / 1.25, 7 * 1.25]


def test_scores_are_read_leaf_only_and_sampled_past_a_bound(tmp_path, monkeypatch):
    """The scores panel reads a row group at a time, only the score leaf of nested columns
    (not the entities' words), and plots a uniform sample once a run has more than
    MAX_SCORES of them: the launcher's memory does not grow with a labeling job's corpus."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertbeam.run import report

    entity = pa.struct([("word", pa.string()), ("score", pa.float32())])
    rows = [[{"word": "w" * 50, "score": (i * 7 + j) % 100 / 100} for j in range(i % 4)]
            for i in range(400)]
    table = pa.table({"id": [f"d{i}" for i in range(400)], "entities": pa.array(rows, pa.list_(entity))})
    pq.write_table(table, tmp_path / "results-00000-of-00001.parquet", row_group_size=50)
    groups = list(report._row_groups(str(tmp_path), ["entities.list.element.score"]))
    assert len(groups) == 8
    assert groups[0].schema.field("entities").type == pa.list_(pa.struct([("score", pa.float32())]))
    total = sum(len(r) for r in rows)
    monkeypatch.setattr(report, "MAX_SCORES", 100)
    panel = report._scores(str(tmp_path))
    assert panel.note == f"{total} scores, median {panel.note.split('median ')[1].split(' ')[0]} " \
                         "(plotted: a uniform sample of 100)."
    monkeypatch.setattr(report, "MAX_SCORES", 10_000)
    exact = report._scores(str(tmp_path))
    median = np.median([e["score"] for r in rows for e in r]).astype(np.float32)
    assert exact.note == f"{total} scores, median {median:.3f}."
