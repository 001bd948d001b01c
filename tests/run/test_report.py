"""The run report: ``_REPORT.html`` renders every panel in a real browser, the first one says
what changed since the previous run, data that isn't there is a one-line fact, not a panel;
labels that moved since the previous run are flagged; ``bertbeam report`` and the job write
it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bertbeam.run.report import REPORT_FILE
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


def drawn_figures(page: Path, tmp_path: Path) -> dict[str, int]:
    """Figure id -> the width Chromium decoded it at (0: not drawn), from the page's DOM
    after its load event."""
    import re

    proc = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-dom'}",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    return {m.group(1): int(m.group(2)) for m in re.finditer(
        r'<img id="figure-([\w_]+)"[^>]*?data-drawn="(\d+)"', proc.stdout)}


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
    """The job's own _REPORT.html, opened in Chromium: every figure is decoded and drawn,
    and the screenshot is not blank; no figure has a coloured frame."""
    from PIL import Image

    page = runs[run] / REPORT_FILE
    html = page.read_text()
    figures = html.count('<img id="figure-')
    drawn = drawn_figures(page, tmp_path)
    assert len(drawn) == figures >= 2 and all(w == 640 for w in drawn.values()), drawn
    image = screenshot(page, tmp_path / f"{run}.png", tmp_path)
    assert (image < 200).any(axis=-1).mean() > 0.02  # text and figures, not an empty page
    assert "http://" not in html and "https://" not in html  # self-contained
    assert "border-top" not in html and "6px solid" not in html
    for key in drawn:
        png = np.asarray(Image.open(runs[run] / f"_REPORT-{key}.png").convert("RGB"))
        edges = np.concatenate([png[0], png[-1], png[:, 0], png[:, -1]])
        assert (edges == 255).all(), key  # white to the edge: no frame


def test_the_first_panel_says_what_changed_since_the_previous_run(runs):
    """day-2 changed the texts of d6-d9 (d5 was "short" already) and dead-letters d10 on
    both days: 4 changed, 6 unchanged, none added or removed; the drift line covers the 4."""
    from bertbeam.run.report import compare_runs

    found = compare_runs(str(runs["day-2"]), str(runs["day-1"]))
    assert found["changed"] == ["d6", "d7", "d8", "d9"] == found["recomputed"]
    assert found["unchanged"] == [f"d{i}" for i in range(6)]
    assert found["added"] == found["removed"] == []
    html = (runs["day-2"] / REPORT_FILE).read_text()
    assert html.index('id="panel-since_previous"') < html.index('<section', html.index("<dl")) + 40
    assert "<td>changed</td><td>4</td><td>d6, d7, d8, d9</td>" in html
    assert "<td>recomputed (both runs)</td><td>4</td><td>label changed for " in html


def test_absent_data_is_a_fact_not_a_panel(runs):
    """The embed run has no previous run, one window per document and one dead-letter
    reason: each is one line under the header, with no panel or figure of its own."""
    html = (runs["embed"] / REPORT_FILE).read_text()
    facts = html.split("<ul class='facts'>", 1)[1].split("</ul>", 1)[0]
    assert "<li>No previous run to compare with (--previous).</li>" in facts
    assert "fit in one window" in facts and "all null_text (read stage)" in facts
    for key in ("since_previous", "windows", "dead_letter"):
        assert f'id="panel-{key}"' not in html and not (runs["embed"] / f"_REPORT-{key}.png").exists()
    summary = read_summary(runs["embed"])
    assert f"{summary['docs_per_second']:,.1f} docs/s" in html
    assert "padding efficiency" in html and "backend torch" in html
    assert f"bertbeam {summary['versions']['bertbeam']}" in html


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
    empty = _throughput({"throughput": []})  # no figure: a line says there are no samples
    assert empty.png is None and empty.fact == "No progress samples (recorded by local runs only)."


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
