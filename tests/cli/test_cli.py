"""The ``bertbeam`` command itself: version, help with defaults, typo handling, and running
from a project that has its own ``pipelines`` package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import bertbeam
from tests.conftest import SAMPLE_TEXTS, read_output, run_cli, write_corpus

BIN = Path(sys.executable).parent / "bertbeam"


def test_version(capsys):
    assert run_cli("--version") == 0
    assert capsys.readouterr().out.strip() == f"bertbeam {bertbeam.__version__}"


@pytest.mark.parametrize(("command", "shown"), [
    ("embed", ["(default: 8192)", "(default: chunk; fill-mask: truncate)",
               "(default: embedded:all-MiniLM-L6-v2)"]),
    ("label", ["classify: labels listed in `labels`, best first (single-label) (default: 1)",
               "fill-mask: predicted tokens per mask (default: 5)", "(default: simple)",
               "qa: the longest answer, in tokens (default: 15)"]),
], ids=["embed", "label"])
def test_help_shows_every_default(capsys, monkeypatch, command, shown):
    monkeypatch.setenv("COLUMNS", "250")  # argparse wraps help at the terminal's width
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command, "--help")
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in shown:
        assert fragment in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--token-budgett", "64"], "Unknown option '--token-budgett': neither a bertbeam nor a Beam "
                                "option. Did you mean --token-budget?"),
    (["--token", "64"], "Unknown option '--token'"),  # no abbreviations of bertbeam flags
    (["--runer", "DirectRunner"], "Did you mean --runner?"),
], ids=["misspelt", "abbreviated", "misspelt-beam"])
def test_a_mistyped_flag_fails_with_a_suggestion(tmp_path, capsys, argv, message):
    corpus = write_corpus(tmp_path / "in.parquet", {"id": ["a"], "text": ["x"]})
    assert run_cli("embed", "--input", corpus, "--output", tmp_path / "out", *argv) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_command_suggests_the_nearest(capsys):
    assert run_cli("embedd") == 2
    assert "Did you mean 'embed'?" in capsys.readouterr().err


def test_runs_from_a_project_with_its_own_pipelines_package(tmp_path, tiny_model):
    """bertbeam installs no top-level ``pipelines`` package, so a user's own one earlier on the
    path does not shadow the command's code."""
    project = tmp_path / "project"
    (project / "pipelines").mkdir(parents=True)
    (project / "pipelines" / "__init__.py").write_text('"""The user\'s own pipelines."""\n')
    corpus = write_corpus(tmp_path / "in.parquet",
                          {"id": [f"d{i}" for i in range(3)], "text": SAMPLE_TEXTS[:3]})
    env = {**os.environ, "PYTHONPATH": str(project)}
    proc = subprocess.run(
        [str(BIN), "embed", "--input", corpus, "--output", str(tmp_path / "out"),
         "--model", tiny_model("bert", "base")],
        cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(r["id"] for r in read_output(tmp_path / "out")) == ["d0", "d1", "d2"]


def test_an_embed_run_imports_only_the_model_stack(tmp_path, tiny_model):
    """A whole local ``bertbeam embed --no-report`` run (launcher and worker in one process)
    imports torch and transformers for its model, and none of the libraries of the other
    commands: no report plots, index, vector sink, training or ONNX library."""
    from tests.test_public_api import OTHER_COMMANDS

    corpus = write_corpus(tmp_path / "in.parquet",
                          {"id": [f"d{i}" for i in range(3)], "text": SAMPLE_TEXTS[:3]})
    argv = ["embed", "--input", corpus, "--output", str(tmp_path / "out"),
            "--model", tiny_model("bert", "base"), "--no-report", "--quiet"]
    code = ("import sys; from bertbeam.cli import main; "
            f"code = main({argv!r}); "
            f"print(code, 'torch' in sys.modules, "
            f"sorted(m for m in {OTHER_COMMANDS!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "0 True []", proc.stdout
    assert len(read_output(tmp_path / "out")) == 3
