"""Model URIs: local dirs, file://, fsspec URLs copied once into a cache, hub names offline."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bertbeam.config import ModelSpec
from bertbeam.core.models import ModelLoadError, check_weights, resolve_model_dir


def test_local_dir_and_file_url_resolve_to_the_same_directory(tiny_model):
    directory = tiny_model("bert", "base")
    assert resolve_model_dir(directory) == os.path.abspath(directory)
    assert resolve_model_dir(f"file://{directory}") == os.path.abspath(directory)


def test_embedded_default_is_the_packaged_checkpoint():
    directory = Path(resolve_model_dir("embedded:all-MiniLM-L6-v2"))
    assert (directory / "model.safetensors").exists()
    assert (directory / "tokenizer.json").exists()


def test_fsspec_url_is_copied_once_to_a_private_cache_and_reused(tmp_path, tiny_model):
    import fsspec

    fs = fsspec.filesystem("memory")
    source = Path(tiny_model("bert", "base"))
    for f in source.iterdir():
        fs.pipe(f"/models/tiny/{f.name}", f.read_bytes())
    cache = tmp_path / "cache"
    first = resolve_model_dir("memory://models/tiny", cache)
    assert sorted(os.listdir(source)) == sorted(n for n in os.listdir(first) if not n.startswith("."))
    assert (Path(cache) / "models").stat().st_mode & 0o777 == 0o700
    marker = Path(first) / "model.safetensors"
    mtime = marker.stat().st_mtime_ns
    fs.rm("/models/tiny", recursive=True)  # the source is gone: the cached copy must serve
    assert resolve_model_dir("memory://models/tiny", cache) == first
    assert marker.stat().st_mtime_ns == mtime


def test_parallel_workers_copy_a_remote_model_once(tmp_path, tiny_model):
    """Two threads resolving the same URI: one copies under the file lock, both get it."""
    from concurrent.futures import ThreadPoolExecutor

    import fsspec

    fs = fsspec.filesystem("memory")
    for f in Path(tiny_model("bert", "base")).iterdir():
        fs.pipe(f"/models/race/{f.name}", f.read_bytes())
    with ThreadPoolExecutor(4) as pool:
        dirs = list(pool.map(lambda _: resolve_model_dir("memory://models/race", tmp_path), range(4)))
    assert len(set(dirs)) == 1
    leftovers = [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_missing_remote_model_names_the_uri(tmp_path):
    with pytest.raises(ModelLoadError, match="memory://nowhere/model"):
        resolve_model_dir("memory://nowhere/model", tmp_path)


def test_hub_name_offline_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="'org/some-model'.*could not be fetched"):
        resolve_model_dir("org/some-model", tmp_path)


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_model):
    directory = tmp_path / "pickled"
    shutil.copytree(tiny_model("bert", "base"), directory)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match="pickle-based weights.*--allow-pickle-weights"):
        check_weights(str(directory), "x", allow_pickle_weights=False)
    check_weights(str(directory), "x", allow_pickle_weights=True)


def test_checkpoint_without_the_task_head_is_refused(tiny_model):
    from transformers import AutoConfig

    from bertbeam.core.models import check_task_fit

    config = AutoConfig.from_pretrained(tiny_model("bert", "base"))
    with pytest.raises(ModelLoadError, match="ForSequenceClassification"):
        check_task_fit(config, "AutoModelForSequenceClassification", "tiny")
    check_task_fit(AutoConfig.from_pretrained(tiny_model("bert", "classify")),
                   "AutoModelForSequenceClassification", "tiny")


def test_cpu_streams_share_out_the_threads(tiny_model):
    import torch

    from bertbeam.core.models import load_model, resolve_cpu_streams

    assert [resolve_cpu_streams("auto", n) for n in (1, 2, 16)] == [1, 2, 4]
    assert resolve_cpu_streams(3, 2) == 3
    with pytest.raises(ValueError, match="cpu_streams"):
        ModelSpec(cpu_streams=0)
    before = torch.get_num_threads()
    try:
        for streams, expected in (("auto", (2, 1)), (1, (1, 2))):
            spec = ModelSpec(uri=tiny_model("bert", "base"), device="cpu", num_threads=2,
                             cpu_streams=streams)
            loaded = load_model(spec, "AutoModel")
            assert (loaded.streams, torch.get_num_threads()) == expected
    finally:
        torch.set_num_threads(before)
