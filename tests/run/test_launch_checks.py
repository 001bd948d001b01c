"""Launcher checks: every user error fails before the pipeline starts, with one line on stderr,
no traceback and exit status 2, and leaves the output as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli, write_corpus

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def corpus(tmp_path) -> str:
    return write_corpus(tmp_path / "in" / "x.parquet", {"id": ["a", "b"], "text": ["hello", "world"]})


def _refused(capsys, *argv: object) -> str:
    """Runs the CLI, asserts a one-line refusal (status 2, no traceback); returns the line."""
    capsys.readouterr()  # what fixtures printed (a model built for the first time)
    code = run_cli(*argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def _copy_model(tiny_model, tmp_path: Path, head: str = "base") -> Path:
    target = tmp_path / f"model-{head}"
    shutil.copytree(tiny_model("bert", head), target)
    return target


# -- locations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["", "   "])
def test_an_empty_output_is_refused(tmp_path, corpus, tiny_model, capsys, output, monkeypatch):
    """``--output "$OUT"`` with OUT unset: never the current directory."""
    monkeypatch.chdir(tmp_path)
    err = _refused(capsys, "embed", "--input", corpus, "--output", output,
                   "--model", tiny_model("bert", "base"))
    assert "--output is empty" in err
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_an_output_inside_the_input_glob_is_refused(tmp_path, corpus, tiny_model, capsys):
    """Its results would be read back as input by this run or the next."""
    err = _refused(capsys, "embed", "--input", str(tmp_path / "in" / "*.parquet"), "--output",
                   tmp_path / "in", "--model", tiny_model("bert", "base"))
    assert "inside the input" in err
    err = _refused(capsys, "embed", "--input", str(tmp_path / "**" / "*.parquet"), "--output",
                   tmp_path / "in" / "out", "--model", tiny_model("bert", "base"))
    assert "inside the input" in err


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_an_output_that_is_or_is_under_a_file_is_refused(tmp_path, corpus, tiny_model, capsys,
                                                         where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    output = blocker if where == "file" else blocker / "out"
    err = _refused(capsys, "embed", "--input", corpus, "--output", output,
                   "--model", tiny_model("bert", "base"))
    assert "a file" in err
    assert blocker.read_text() == "not a directory"


def test_a_read_only_output_is_refused(tmp_path, corpus, tiny_model, capsys):
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        err = _refused(capsys, "embed", "--input", corpus, "--output", mount / "out",
                       "--model", tiny_model("bert", "base"))
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    assert "not writable" in err and "Read-only" in err


def test_an_output_the_user_may_not_write_is_refused(corpus, tiny_model):
    """Tests run as root, whom permissions do not stop: the command runs as ``nobody``, in a
    directory it may read (pytest's own is private to root)."""
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as an unprivileged user")
    for parent in [*Path(sys.executable).parents, *ROOT.parents]:
        if parent.stat().st_mode & 0o005 != 0o005:
            pytest.skip(f"{parent} is not readable by an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="bertbeam-nobody-"))
    try:
        base.chmod(0o755)
        shutil.copy(corpus, base / "in.parquet")
        model = shutil.copytree(tiny_model("bert", "base"), base / "model")
        locked = base / "locked"
        locked.mkdir()
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        env = {**os.environ, "HOME": str(base), "BERTBEAM_CACHE": str(base / "cache"),
               "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
             "-m", "bertbeam.cli", "embed", "--input", str(base / "in.parquet"), "--output",
             str(locked / "out"), "--model", str(model)],
            capture_output=True, text=True, cwd=base, env=env, timeout=300)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not writable" in proc.stderr and "Permission denied" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_input_directory_is_refused_with_a_glob_to_use(tmp_path, corpus, tiny_model, capsys):
    err = _refused(capsys, "embed", "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--model", tiny_model("bert", "base"))
    assert f"'{tmp_path / 'in'}/*.parquet'" in err


def test_an_empty_input_is_refused(tmp_path, tiny_model, capsys):
    err = _refused(capsys, "embed", "--input", " ", "--output", tmp_path / "out",
                   "--model", tiny_model("bert", "base"))
    assert "--input is empty" in err


# -- the checkpoint ----------------------------------------------------------------------------


def _strip_tokenizer(model: Path) -> None:
    for f in model.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()


def _truncate_weights(model: Path) -> None:
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])


def _drop_head(model: Path, tiny_model) -> None:
    """A classifier's config with the base model's weights: no classifier.* tensors."""
    shutil.copy(Path(tiny_model("bert", "base")) / "model.safetensors", model / "model.safetensors")


def _break_config(model: Path) -> None:
    (model / "config.json").write_text('{"model_type": "bert", ')


def _remote_code(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="bertbeam-custom", auto_map={"AutoConfig": "custom.CustomConfig"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "custom.py").write_text("raise SystemExit('remote code ran')\n")


@pytest.mark.parametrize(("breakage", "head", "expected"), [
    (_strip_tokenizer, "base", "no tokenizer files"),
    (_truncate_weights, "base", "truncated"),
    (_drop_head, "classify", "no 'classifier.weight'"),
    (_break_config, "base", "config.json is not valid JSON"),
    (_remote_code, "base", "--trust-remote-code"),
])
def test_an_unusable_checkpoint_is_refused_at_launch(tmp_path, corpus, tiny_model, capsys,
                                                     breakage, head, expected):
    model = _copy_model(tiny_model, tmp_path, head)
    if breakage is _drop_head:
        breakage(model, tiny_model)
    else:
        breakage(model)
    command = ("embed",) if head == "base" else ("label", "--task", "classify")
    err = _refused(capsys, *command, "--input", corpus, "--output", tmp_path / "out",
                   "--model", model)
    assert expected in err
    assert "trust_remote_code=True" not in err
    assert not (tmp_path / "out" / "_SUMMARY.json").exists()


def test_device_cuda_without_cuda_is_refused_on_a_local_run(tmp_path, corpus, tiny_model, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    err = _refused(capsys, "embed", "--input", corpus, "--output", tmp_path / "out",
                   "--model", tiny_model("bert", "base"), "--device", "cuda")
    assert "no CUDA device" in err


# -- settings against the resolved model ------------------------------------------------------


@pytest.mark.parametrize(("flags", "expected"), [
    (("--max-length", "1"), "leaves no room for text"),
    (("--max-length", "2"), "leaves no room for text"),
    (("--stride", "100"), "less than half the window"),  # the tiny model's window is 128
    (("--long-docs", "truncate", "--stride", "8"), "--long-docs chunk only"),
    (("--threads", "0"), "expected a positive integer"),
    (("--token", "64"), "Did you mean --token-budget"),
])
def test_settings_that_cannot_work_are_refused(tmp_path, corpus, tiny_model, capsys, flags,
                                               expected):
    try:
        err = _refused(capsys, "embed", "--input", corpus, "--output", tmp_path / "out",
                       "--model", tiny_model("bert", "base"), *flags)
    except SystemExit as exc:  # argparse's own refusal: status 2 and a usage line
        assert exc.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
    assert expected in err


@pytest.fixture()
def two_window_tokenizers(tiny_model, monkeypatch) -> str:
    """tokenizers 0.23.1/0.23.2 return two overflow windows whatever the length; simulated
    by dropping the overflow windows the real library returns. Yields the model directory."""
    from bertbeam.config import ModelSpec
    from bertbeam.core.models import load_tokenizer

    model = tiny_model("bert", "base")
    cls = type(load_tokenizer(model, ModelSpec(uri=model)))
    real = cls.__call__

    def two_windows(self, *args, **kwargs):
        enc = real(self, *args, **kwargs)
        if kwargs.get("return_overflowing_tokens") and len(enc["input_ids"]) > 2:
            for key in list(enc.keys()):
                enc[key] = enc[key][:2]
        return enc

    monkeypatch.setattr(cls, "__call__", two_windows)
    return model


def test_a_tokenizers_library_that_cuts_windows_is_refused_at_launch(tmp_path, corpus, capsys,
                                                                      two_window_tokenizers):
    err = _refused(capsys, "embed", "--input", corpus, "--output", tmp_path / "out",
                   "--model", two_window_tokenizers)
    assert "windows" in err and "tokenizers" in err


def test_a_tokenizers_library_that_cuts_windows_fails_the_worker_loudly(two_window_tokenizers):
    """The worker checks its own library at setup (a worker image may ship another)."""
    from bertbeam.config import ModelSpec, TokenizeSpec
    from bertbeam.core.engine import BrokenTokenizerError, Engine, EngineSpec
    from bertbeam.tasks.embed import EmbedTask

    spec = EngineSpec(ModelSpec(uri=two_window_tokenizers, device="cpu"), TokenizeSpec(),
                      EmbedTask())
    with pytest.raises(BrokenTokenizerError, match="windows"):
        Engine.acquire(spec)


def test_the_requirement_excludes_the_tokenizers_versions_that_cut_windows():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [d for d in deps if d.startswith("tokenizers")]
    assert "!=0.23.1" in req and "!=0.23.2" in req


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
@pytest.mark.parametrize("head", ["classify", "ner", "qa", "fill-mask"])
def test_a_sound_checkpoint_of_every_head_passes_the_checks(tiny_model, arch, head):
    """No false refusal: tied decoder weights (fill-mask) and each architecture's head names."""
    from transformers import AutoConfig

    from bertbeam.run.checks import check_checkpoint_files, check_head_weights
    from tests.conftest import HEADS

    model = tiny_model(arch, head)
    check_checkpoint_files(model, model)
    check_head_weights(model, model, AutoConfig.from_pretrained(model), HEADS[head])
