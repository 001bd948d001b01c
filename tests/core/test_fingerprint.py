"""Model and job fingerprints (issue 27): the whole of every weight file counts, the result is
cached by the files' sizes and times outside the model directory, and the backend is part of
what a carried row was computed with."""

from __future__ import annotations

import os

import pytest

from bertbeam.config import ModelSpec, RunSpec
from bertbeam.core import fingerprint
from bertbeam.core.fingerprint import job_fingerprint, model_fingerprint
from bertbeam.tasks.embed import EmbedTask


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTBEAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def checkpoint(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(bytes(range(256)) * (5 * 4096))  # 5 MiB
    return model


def test_a_change_in_the_middle_of_a_large_weight_file_changes_the_fingerprint(checkpoint, cache):
    weights = checkpoint / "model.safetensors"
    before = model_fingerprint(str(checkpoint))
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF  # same size, first and last MiB unchanged
    weights.write_bytes(bytes(data))
    assert model_fingerprint(str(checkpoint)) != before


def test_the_fingerprint_is_cached_outside_the_model_and_keyed_by_the_files(checkpoint, cache,
                                                                            monkeypatch):
    first = model_fingerprint(str(checkpoint))
    entries = list((cache / "fingerprints").glob("*.json"))
    assert len(entries) == 1
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.json", "model.safetensors"]

    def no_hashing(files):
        raise AssertionError("hashed again although no file changed")

    monkeypatch.setattr(fingerprint, "_hash_files", no_hashing)
    assert model_fingerprint(str(checkpoint)) == first
    (checkpoint / "config.json").write_text('{"a": 1}')  # a write: hash again
    with pytest.raises(AssertionError, match="hashed again"):
        model_fingerprint(str(checkpoint))


def test_a_tampered_cache_entry_is_ignored(checkpoint, cache):
    first = model_fingerprint(str(checkpoint))
    entry = next((cache / "fingerprints").glob("*.json"))
    entry.write_text('{"signature": "x", "fingerprint": "0000000000000000"}')
    assert model_fingerprint(str(checkpoint)) == first
    entry.write_text("not json")
    assert model_fingerprint(str(checkpoint)) == first


def test_a_read_only_model_and_an_unwritable_cache_still_fingerprint(checkpoint, tmp_path,
                                                                     monkeypatch):
    expected = fingerprint._hash_files(fingerprint._model_files(checkpoint.resolve()))
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv("BERTBEAM_CACHE", str(blocked))
    os.chmod(checkpoint, 0o555)
    try:
        assert model_fingerprint(str(checkpoint)) == expected
    finally:
        os.chmod(checkpoint, 0o755)


def test_backend_and_quantization_are_part_of_the_job_fingerprint():
    def fp(**model):
        return job_fingerprint(EmbedTask(), RunSpec(model=ModelSpec(**model)), "f1")

    assert fp(backend="onnx", quantize="int8") != fp(backend="torch", quantize="int8")
    assert fp(backend="onnx") != fp(backend="torch")
    assert fp(quantize="int8") != fp()
    assert fp() == fp()


def test_text_fingerprints_of_a_chunk_are_the_per_text_ones():
    """text_fingerprints (the chunk path of KeyByText) gives exactly text_fingerprint of each
    text, so rows of earlier runs still match: empty, non-ASCII and lone-surrogate texts too."""
    texts = ["", "The cat sat.", "héllo wörld ✓", "x" * 5000, "\ud800 lone surrogate"]
    assert fingerprint.text_fingerprints(texts) == [fingerprint.text_fingerprint(t) for t in texts]
    assert fingerprint.text_fingerprints([]) == []
