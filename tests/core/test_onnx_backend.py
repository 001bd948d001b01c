"""--backend onnx: the same results as the torch backend (float32), int8 within the fidelity
bars, one export per checkpoint and head (cached), CPU only."""

from __future__ import annotations

import numpy as np
import pytest

from bertbeam import ClassifyTask, EmbedTask, EntitiesTask, FillMaskTask, ModelSpec, QATask, RunSpec
from bertbeam.config import BatchSpec, TokenizeSpec
from bertbeam.core.records import Document
from tests.beam_helpers import documents, run_variants
from tests.conftest import ARCHITECTURES, SAMPLE_TEXTS, read_output, run_cli, write_corpus

pytest.importorskip("onnxruntime")


def _runs(model_dir: str, cache: str, **tokenize) -> dict[str, RunSpec]:
    return {backend: RunSpec(model=ModelSpec(uri=model_dir, device="cpu", backend=backend,
                                             cache_dir=cache),
                             tokenize=TokenizeSpec(**tokenize), batch=BatchSpec(token_budget=512))
            for backend in ("torch", "onnx")}


def _close(a: object, b: object, atol: float = 1e-4) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k], atol)
    elif isinstance(a, list | tuple | np.ndarray) and not isinstance(a, str):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y, atol)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=atol)
    else:
        assert a == b


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_head_gives_the_torch_results_on_onnx(tmp_path, tiny_model, arch):
    """Classify, entities, answers and fill-mask predictions through ONNX Runtime equal the
    torch backend's (labels and offsets exactly, scores within 1e-4), long documents too."""
    cache = str(tmp_path / "cache")
    texts = [*SAMPLE_TEXTS, " ".join(SAMPLE_TEXTS) * 2]
    mask = "<mask>" if arch == "roberta" else "[MASK]"
    cases = {
        "classify": (ClassifyTask(top_k=3), "classify", documents(texts), {}),
        "ner": (EntitiesTask(aggregation="first"), "ner", documents(texts), {"max_length": 32,
                                                                             "stride": 8}),
        "qa": (QATask(), "qa", [Document(f"q{i}", "Where does John live?", t)
                                for i, t in enumerate(texts)], {"max_length": 48, "stride": 12}),
        "fill-mask": (FillMaskTask(top_k=3), "fill-mask",
                      documents([f"The cat sat on the {mask}.", f"{mask} is a list."]),
                      {"long_docs": "truncate"}),
    }
    for name, (task, head, docs, tokenize) in cases.items():
        runs = _runs(tiny_model(arch, head), cache, **tokenize)
        out = run_variants(tmp_path, docs, {b: (task, run) for b, run in runs.items()})
        (torch_rows, torch_dead), (onnx_rows, onnx_dead) = out["torch"], out["onnx"]
        assert torch_rows and onnx_rows.keys() == torch_rows.keys(), name
        assert onnx_dead.keys() == torch_dead.keys(), name
        for doc_id, row in torch_rows.items():
            _close(onnx_rows[doc_id], row)


def test_embeddings_float32_and_int8_fidelity(tmp_path, embedded_model_dir):
    """all-MiniLM-L6-v2: float32 on ONNX has cosine >= 0.9999 with torch float32 per row;
    int8 (ONNX Runtime's per-channel dynamic quantization) has mean >= 0.99 and min >= 0.97."""
    from bertbeam.cli.demo import demo_texts

    docs = documents(demo_texts()[:150])
    cache = str(tmp_path / "cache")
    variants = {
        name: (EmbedTask(), RunSpec(model=ModelSpec(device="cpu", backend=backend, quantize=q,
                                                    cache_dir=cache)))
        for name, backend, q in (("torch", "torch", "none"), ("onnx", "onnx", "none"),
                                 ("int8", "onnx", "int8"))}
    out = run_variants(tmp_path, docs, variants)
    ref = out["torch"][0]
    for name, floor_min, floor_mean in (("onnx", 0.9999, 0.9999), ("int8", 0.97, 0.99)):
        rows = out[name][0]
        assert rows.keys() == ref.keys()
        cos = np.array([float(np.dot(rows[d]["embedding"], ref[d]["embedding"])) for d in ref])
        assert cos.min() >= floor_min and cos.mean() >= floor_mean, (name, cos.min(), cos.mean())


def test_the_export_is_cached_per_checkpoint_and_head(tmp_path, tiny_model, monkeypatch):
    from bertbeam.core import onnx_backend
    from bertbeam.core.models import load_model

    exports = []
    real = onnx_backend._export
    monkeypatch.setattr(onnx_backend, "_export", lambda *a, **k: exports.append(a[1]) or real(*a, **k))
    spec = ModelSpec(uri=tiny_model("bert", "base"), backend="onnx", cache_dir=str(tmp_path))
    load_model(spec, "AutoModel")
    load_model(ModelSpec(uri=spec.uri, backend="onnx", cache_dir=str(tmp_path), num_threads=1),
               "AutoModel")
    assert exports == ["AutoModel"]
    load_model(ModelSpec(uri=spec.uri, backend="onnx", quantize="int8", cache_dir=str(tmp_path)),
               "AutoModel")
    assert exports == ["AutoModel", "AutoModel"]
    (entry,) = [p for p in (tmp_path / "onnx").iterdir() if p.is_dir() and (p / "model.onnx").exists()][:1]
    assert not [p for p in (tmp_path / "onnx").iterdir() if p.name.startswith(".")]
    assert entry.stat().st_mode & 0o077 == 0


def test_onnx_is_cpu_float32_or_int8():
    with pytest.raises(ValueError, match="backend='onnx' runs on CPU"):
        ModelSpec(backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="backend='onnx' runs on CPU"):
        ModelSpec(backend="onnx", dtype="bfloat16")
    with pytest.raises(ValueError, match="Invalid backend: 'tensorrt'"):
        ModelSpec(backend="tensorrt")


def test_cli_backend_onnx(tmp_path, tiny_model):
    corpus = write_corpus(tmp_path / "in.parquet", {"id": ["a", "b"], "text": SAMPLE_TEXTS[:2]})
    assert run_cli("label", "--task", "classify", "--input", corpus, "--output", tmp_path / "o",
                   "--model", tiny_model("distilbert", "classify"), "--backend", "onnx",
                   "--quantize", "int8", "--model-cache-dir", tmp_path / "cache") == 0
    assert sorted(r["id"] for r in read_output(tmp_path / "o")) == ["a", "b"]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_int8_labels_do_not_depend_on_the_thread_count(tmp_path, tiny_model, backend):
    """int8 kernels at 1, 2 and 4 threads (and streams) label every document alike and score
    it within 1e-6: a document's batch, not the thread count, sets its activation scales."""
    from bertbeam.cli.demo import demo_texts

    docs = documents(demo_texts()[:120])
    model = tiny_model("bert", "classify")
    variants = {
        f"t{n}": (ClassifyTask(), RunSpec(model=ModelSpec(
            uri=model, backend=backend, quantize="int8", num_threads=n, cpu_streams=min(n, 2),
            cache_dir=str(tmp_path / "cache"))))
        for n in (1, 2, 4)}
    out = run_variants(tmp_path, docs, variants)
    labels = {name: {d: r["label"] for d, r in rows.items()} for name, (rows, _) in out.items()}
    assert labels["t1"] == labels["t2"] == labels["t4"] and len(labels["t1"]) == 120
    for name in ("t2", "t4"):
        _close(out[name][0], out["t1"][0], atol=1e-6)


# -- the export cache under faults (issue 27) ---------------------------------------------------


def _spy_exports(monkeypatch) -> list[str]:
    from bertbeam.core import onnx_backend

    exports: list[str] = []
    real = onnx_backend._export
    monkeypatch.setattr(onnx_backend, "_export",
                        lambda *a, **k: exports.append(str(a[5])) or real(*a, **k))
    return exports


def _embed(model, cache) -> np.ndarray:
    from bertbeam.core.models import load_model

    loaded = load_model(ModelSpec(uri=model, backend="onnx", cache_dir=str(cache)), "AutoModel")
    inputs = loaded.tokenizer(SAMPLE_TEXTS[:3], padding=True, return_tensors="pt")
    return loaded.model(**inputs).last_hidden_state.numpy()


def test_a_damaged_cached_export_is_detected_and_rebuilt(tmp_path, tiny_model, monkeypatch):
    """Bytes of the cached model.onnx altered (same size) or the file cut short: the next
    load exports again instead of failing (or running altered weights) forever."""
    model = tiny_model("bert", "base")
    exports = _spy_exports(monkeypatch)
    expected = _embed(model, tmp_path)
    (onnx,) = (tmp_path / "onnx").glob("*/model.onnx")
    data = bytearray(onnx.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    onnx.write_bytes(bytes(data))
    np.testing.assert_allclose(_embed(model, tmp_path), expected, atol=1e-5)
    onnx.write_bytes(onnx.read_bytes()[:1000])
    np.testing.assert_allclose(_embed(model, tmp_path), expected, atol=1e-5)
    assert len(exports) == 3
    np.testing.assert_allclose(_embed(model, tmp_path), expected, atol=1e-5)
    assert len(exports) == 3  # an intact export is read, not made again


def test_a_complete_export_is_read_without_a_lock_and_an_unwritable_cache_still_runs(
        tmp_path, tiny_model, monkeypatch):
    """Reading a complete export takes no lock (no lock file appears: a read-only cache
    serves); a cache that cannot be written at all exports to a temporary directory."""
    import filelock

    model = tiny_model("bert", "base")
    expected = _embed(model, tmp_path)
    for lock in (tmp_path / "onnx").glob("*.lock"):
        lock.unlink()

    def unwritable(self, *args, **kwargs):
        raise PermissionError(13, "Read-only file system", self.lock_file)

    monkeypatch.setattr(filelock.FileLock, "acquire", unwritable)
    exports = _spy_exports(monkeypatch)
    np.testing.assert_allclose(_embed(model, tmp_path), expected, atol=1e-5)
    assert exports == [] and not list((tmp_path / "onnx").glob("*.lock"))
    np.testing.assert_allclose(_embed(model, tmp_path / "elsewhere"), expected, atol=1e-5)
    assert len(exports) == 1 and "bertbeam-onnx-" in exports[0]
    assert not list((tmp_path / "elsewhere" / "onnx").glob("*/model.onnx"))


def test_a_checkpoint_the_exporter_cannot_handle_fails_at_launch_in_one_line(
        tmp_path, tiny_model, monkeypatch, capsys):
    from bertbeam.core import onnx_backend

    def exporter_fails(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::unknown' to ONNX opset 17 is not "
                           "supported.\n" + "\n".join(f"  frame {i}" for i in range(200)))

    monkeypatch.setattr(onnx_backend, "_export", exporter_fails)
    corpus = write_corpus(tmp_path / "in.parquet", {"id": ["a", "b"], "text": SAMPLE_TEXTS[:2]})
    model = tiny_model("bert", "base")
    capsys.readouterr()
    assert run_cli("embed", "--input", corpus, "--output", tmp_path / "o", "--model", model,
                   "--backend", "onnx", "--model-cache-dir", tmp_path / "cache") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "ONNX exporter cannot handle" in err and "aten::unknown" in err and model in err
    assert "--backend torch" in err
    assert not list((tmp_path / "o").glob("results-*"))
