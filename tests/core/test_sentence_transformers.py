"""Sentence-transformers checkpoints: bertbeam's embeddings equal ``SentenceTransformer.encode``
on checkpoints saved with sentence-transformers' own API — every pooling mode, Dense layers,
Normalize, prompts, truncate_dim, long documents — and what bertbeam cannot run is refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertbeam.core.models import ModelLoadError, check_weights
from bertbeam.core.sentence_transformers import read_stack
from bertbeam.tasks.embed import EmbedTask
from tests.beam_helpers import documents, run_spec, run_variants
from tests.conftest import SAMPLE_TEXTS, read_output, run_cli, write_corpus

PROMPTS = {"query": "query: ", "passage": "passage: ", "plain": ""}
LONG_TEXT = " ".join(SAMPLE_TEXTS * 3)


def _modules(name: str, dim: int) -> list:
    """The modules after the transformer of each test checkpoint."""
    import torch
    from sentence_transformers.models import Dense, LayerNorm, Normalize, Pooling

    torch.manual_seed(1)
    return {
        "dense": lambda: [Pooling(dim, "mean"), Dense(dim, 16, activation_function=torch.nn.Tanh()),
                          Normalize()],
        "cls": lambda: [Pooling(dim, "cls")],
        "max": lambda: [Pooling(dim, "max")],
        "weightedmean": lambda: [Pooling(dim, "weightedmean")],
        "lasttoken": lambda: [Pooling(dim, "lasttoken")],
        "mean_sqrt_len_tokens": lambda: [Pooling(dim, "mean_sqrt_len_tokens")],
        "prompts": lambda: [Pooling(dim, "mean", include_prompt=False), Normalize()],
        "roberta-prompts": lambda: [Pooling(dim, "mean", include_prompt=False), Normalize()],
        "roberta-lowercase": lambda: [Pooling(dim, "mean")],
        "prompts-included": lambda: [Pooling(dim, "mean", include_prompt=True), Normalize()],
        "prompts-cls": lambda: [Pooling(dim, "cls", include_prompt=False)],
        # Two modes concatenated, two Dense layers (the second with a residual connection).
        "stacked": lambda: [Pooling(dim, ("cls", "max")),
                            Dense(2 * dim, 8, activation_function=torch.nn.Identity()),
                            Dense(8, 8, activation_function=torch.nn.ReLU(), use_residual=True),
                            Normalize()],
        "layernorm": lambda: [Pooling(dim, "mean"), LayerNorm(dim)],
    }[name]()


@pytest.fixture(scope="session")
def st_checkpoint(tiny_model, tmp_path_factory) -> Callable[[str], str]:
    """``st_checkpoint(name)`` -> directory of a sentence-transformers checkpoint saved with
    ``SentenceTransformer.save`` around the tiny random BERT (RoBERTa for ``roberta-*``);
    built once per session."""
    root = tmp_path_factory.mktemp("st-models")
    built: dict[str, str] = {}

    def make(name: str) -> str:
        if name not in built:
            from sentence_transformers import SentenceTransformer
            from sentence_transformers.models import Transformer

            arch = "roberta" if name.startswith("roberta") else "bert"
            transformer = Transformer(tiny_model(arch, "base"))
            dim = transformer.auto_model.config.hidden_size
            prompts = "prompts" in name
            model = SentenceTransformer(
                modules=[transformer, *_modules(name, dim)], device="cpu",
                prompts=PROMPTS if prompts else None, default_prompt_name="query" if prompts else None)
            model.save(str(root / name))
            if "lowercase" in name:
                # As checkpoints of older sentence-transformers state it (6.x reads it, but does
                # not write it); RoBERTa's tokenizer keeps case, so it changes what it sees.
                _edit_json(root / name / "sentence_bert_config.json",
                           lambda c: {**c, "do_lower_case": True})
            built[name] = str(root / name)
        return built[name]

    return make


def _encode(directory: str, texts: list[str], **options) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(directory, device="cpu").encode(texts, batch_size=4, **options)


def _assert_parity(got: dict[str, np.ndarray], expected: np.ndarray, label: str) -> None:
    """Per row: cosine >= 0.9999 and the same values (the scale too: normalized or not)."""
    assert len(got) == len(expected), label
    for i, reference in enumerate(expected):
        vector = got[f"d{i}"]
        assert vector.shape == reference.shape, label
        cosine = float(vector @ reference) / (np.linalg.norm(vector) * np.linalg.norm(reference))
        assert cosine >= 0.9999, (label, i, cosine)
        np.testing.assert_allclose(vector, reference, rtol=1e-3, atol=1e-4, err_msg=label)


# name -> (checkpoint, EmbedTask options, encode options)
VARIANTS = {
    "dense-tanh": ("dense", {}, {}),
    "cls": ("cls", {}, {}),
    "max": ("max", {}, {}),
    "weightedmean": ("weightedmean", {}, {}),
    "lasttoken": ("lasttoken", {}, {}),
    "mean_sqrt_len_tokens": ("mean_sqrt_len_tokens", {}, {}),
    "default-prompt-excluded": ("prompts", {}, {}),
    "named-prompt-excluded": ("prompts", {"prompt_name": "passage"}, {"prompt_name": "passage"}),
    "own-prompt-excluded": ("prompts", {"prompt": "Represent: "}, {"prompt": "Represent: "}),
    "prompt-turned-off": ("prompts", {"prompt": ""}, {"prompt": ""}),
    "default-prompt-included": ("prompts-included", {}, {}),
    # Byte-level BPE: the prompt alone ends in its own "Ġ" token, so the count (as
    # sentence-transformers takes it) also covers the text's first token.
    "roberta-prompt-excluded": ("roberta-prompts", {}, {}),
    "do-lower-case-with-prompt": ("roberta-lowercase", {"prompt": "Query: "}, {"prompt": "Query: "}),
    "prompt-excluded-cls": ("prompts-cls", {}, {}),
    "stacked-dense": ("stacked", {}, {}),
    "truncate-dim": ("dense", {"truncate_dim": 6}, {"truncate_dim": 6}),
}


def test_embeddings_equal_encode_for_every_module_stack(tmp_path, st_checkpoint):
    """Every variant, in one pipeline through InferDocuments (ChunkDocuments | Tokenize |
    BatchByTokens | RunModel | Postprocess), equals ``encode`` row by row: pooling modes, Dense
    layers with their activations, Normalize, prompts in or out of pooling, truncate_dim."""
    texts = SAMPLE_TEXTS
    variants = {name: (EmbedTask(**options), run_spec(st_checkpoint(checkpoint), budget=96))
                for name, (checkpoint, options, _) in VARIANTS.items()}
    results = run_variants(tmp_path, documents(texts), variants)
    for name, (checkpoint, _, encode_options) in VARIANTS.items():
        rows, dead = results[name]
        assert not dead, (name, dead)
        got = {i: np.asarray(r["embedding"], dtype=np.float32) for i, r in rows.items()}
        _assert_parity(got, _encode(st_checkpoint(checkpoint), texts, **encode_options), name)
    truncated = np.stack([results["truncate-dim"][0][f"d{i}"]["embedding"] for i in range(len(texts))])
    assert (np.linalg.norm(truncated, axis=1) < 0.9999).all()  # encode truncates after Normalize


def test_pooling_override_equals_a_checkpoint_saved_with_that_mode(tmp_path, st_checkpoint):
    """``pooling='weightedmean'`` on a CLS checkpoint gives what the weightedmean one gives
    (both share the transformer's weights)."""
    texts = SAMPLE_TEXTS[:4]
    variants = {"override": (EmbedTask(pooling="weightedmean"), run_spec(st_checkpoint("cls")))}
    rows, _ = run_variants(tmp_path, documents(texts), variants)["override"]
    got = {i: np.asarray(r["embedding"], dtype=np.float32) for i, r in rows.items()}
    _assert_parity(got, _encode(st_checkpoint("weightedmean"), texts), "override")


def _windows_by_hand(directory: str, text: str, prompt: str, *, max_length: int, stride: int):
    """Each window's ``sentence_embedding`` from sentence-transformers' own modules, with the
    prompt's tokens in window 0 only, and the windows' token counts."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(directory, device="cpu")
    tokenizer = model.tokenizer
    enc = tokenizer(prompt + text, truncation=True, max_length=max_length, stride=stride,
                    return_overflowing_tokens=True)
    prompt_length = len(tokenizer(prompt)["input_ids"]) - 1
    vectors, lengths = [], []
    for index, ids in enumerate(enc["input_ids"]):
        features = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if index == 0 and prompt:
            features["prompt_length"] = prompt_length
        with torch.no_grad():
            vectors.append(model(features)["sentence_embedding"][0].numpy())
        lengths.append(len(ids))
    return np.stack(vectors), np.array(lengths, dtype=np.float64)


@pytest.mark.parametrize("checkpoint", ["dense", "prompts"])
def test_long_documents_combine_windows_of_the_whole_stack(tmp_path, st_checkpoint, checkpoint):
    """A document longer than a window: each window runs the whole stack (Dense, Normalize) and
    the prompt, put before the text, is in window 0 only (left out of its pooling when the
    checkpoint excludes prompts); windows combine as a token-weighted mean, normalized."""
    directory = st_checkpoint(checkpoint)
    variants = {"long": (EmbedTask(), run_spec(directory, budget=256, max_length=32, stride=8))}
    rows, dead = run_variants(tmp_path, documents([LONG_TEXT, "short"]), variants)["long"]
    assert not dead
    prompt = PROMPTS["query"] if checkpoint == "prompts" else ""
    vectors, lengths = _windows_by_hand(directory, LONG_TEXT, prompt, max_length=32, stride=8)
    assert len(vectors) > 3 and rows["d0"]["n_chunks"] == len(vectors)
    expected = (vectors * (lengths / lengths.sum())[:, None]).sum(0)
    expected /= np.linalg.norm(expected)
    got = np.asarray(rows["d0"]["embedding"])
    assert float(got @ expected) / np.linalg.norm(got) >= 0.9999
    assert rows["d0"]["n_tokens"] == int(lengths.sum())


@pytest.mark.parametrize(("checkpoint", "flags", "encode_options", "dim"), [
    ("dense", [], {}, 16),
    ("prompts", ["--prompt-name", "passage", "--truncate-dim", "8"],
     {"prompt_name": "passage", "truncate_dim": 8}, 8),
])
def test_cli_flags_and_schema_dimension(tmp_path, st_checkpoint, checkpoint, flags, encode_options, dim):
    """``bertbeam embed`` writes the real output dimension into the schema (Dense out_features,
    truncate_dim), and ``--prompt-name`` / ``--truncate-dim`` equal encode's options."""
    directory = st_checkpoint(checkpoint)
    texts = SAMPLE_TEXTS[:5]
    path = write_corpus(tmp_path / "in.parquet", {"id": [f"d{i}" for i in range(5)], "text": texts})
    assert run_cli("embed", "--input", path, "--output", tmp_path / "out", "--model", directory,
                   *flags) == 0
    schema = pq.read_schema(next((tmp_path / "out").glob("results-*.parquet")))
    assert schema.field("embedding").type == pa.list_(pa.float32(), dim)
    got = {r["id"]: np.asarray(r["embedding"], dtype=np.float32) for r in read_output(tmp_path / "out")}
    _assert_parity(got, _encode(directory, texts, **encode_options), checkpoint)


def test_embedded_minilm_with_a_dense_layer_gives_its_output_dimension(tmp_path, embedded_model_dir):
    """The issue's case: all-MiniLM-L6-v2 plus Dense 384 -> 128 Tanh, saved with
    sentence-transformers; ``bertbeam embed`` writes 128 dimensions equal to encode's."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    base = SentenceTransformer(embedded_model_dir, device="cpu")
    torch.manual_seed(2)
    model = SentenceTransformer(modules=[base[0], base[1], Dense(384, 128, activation_function=torch.nn.Tanh()),
                                         base[2]], device="cpu")
    directory = tmp_path / "minilm-dense"
    model.save(str(directory))
    texts = SAMPLE_TEXTS
    path = write_corpus(tmp_path / "in.parquet", {"id": [f"d{i}" for i in range(len(texts))], "text": texts})
    assert run_cli("embed", "--input", path, "--output", tmp_path / "out", "--model", directory) == 0
    got = {r["id"]: np.asarray(r["embedding"], dtype=np.float32) for r in read_output(tmp_path / "out")}
    _assert_parity(got, model.encode(texts), "minilm-dense")


def test_unknown_module_fails_with_its_name(tmp_path, st_checkpoint, capsys):
    """A checkpoint with a module bertbeam cannot run (LayerNorm) is a one-line error naming it,
    before the pipeline starts."""
    path = write_corpus(tmp_path / "in.parquet", {"id": ["a"], "text": ["hello"]})
    code = run_cli("embed", "--input", path, "--output", tmp_path / "out", "--model",
                   st_checkpoint("layernorm"))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "LayerNorm" in err and "2_LayerNorm" in err
    assert not list((tmp_path / "out").glob("results-*.parquet"))


def _copy(directory: str, tmp_path: Path) -> Path:
    target = tmp_path / Path(directory).name
    shutil.copytree(directory, target)
    return target


def _edit_json(path: Path, edit: Callable[[object], object]) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _set_type(modules: list, index: int, type_name: str) -> list:
    modules[index]["type"] = type_name
    return modules


def _normalize_before_dense(modules: list) -> list:
    modules[2]["idx"], modules[3]["idx"] = modules[3]["idx"], modules[2]["idx"]
    return modules


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: _edit_json(d / "modules.json", lambda m: _set_type(m, 1, "my_package.MeanPooling")),
     "'my_package.MeanPooling'"),
    (lambda d: _edit_json(d / "modules.json", _normalize_before_dense),
     "'2_Dense' (Dense) after Transformer -> Pooling -> Normalize"),
    (lambda d: _edit_json(d / "2_Dense/config.json",
                          lambda c: {**c, "activation_function": "my_package.Swish"}),
     "'my_package.Swish'"),
    (lambda d: _edit_json(d / "1_Pooling/config.json", lambda c: {**c, "pooling_mode": "median"}),
     "['median']"),
    (lambda d: _edit_json(d / "2_Dense/config.json", lambda c: {**c, "in_features": 64}),
     "Dense module '2_Dense' takes 64 dimensions, but pooling mean gives 32"),
    (lambda d: (d / "2_Dense/model.safetensors").unlink(),
     "Dense module '2_Dense' has no weights (model.safetensors or pytorch_model.bin)"),
])
def test_stacks_bertbeam_cannot_run_are_refused(tmp_path, st_checkpoint, edit, message):
    """Custom module types, modules out of order, custom activations, unknown pooling modes,
    mismatched Dense layers and Dense layers without weights fail when the task resolves the
    checkpoint (on the launcher, for the schema), with what is wrong."""
    from transformers import AutoConfig

    directory = _copy(st_checkpoint("dense"), tmp_path)
    edit(directory)
    with pytest.raises(ModelLoadError) as raised:
        EmbedTask().schema(AutoConfig.from_pretrained(directory))
    assert message in str(raised.value)


def test_pickled_dense_weights_follow_the_pickle_policy(tmp_path, st_checkpoint):
    """A Dense layer with only ``pytorch_model.bin`` is refused without
    ``allow_pickle_weights`` (naming the file), and loaded (weights only) with it."""
    import dataclasses

    import torch
    from safetensors.torch import load_file

    directory = _copy(st_checkpoint("dense"), tmp_path)
    dense = directory / "2_Dense"
    torch.save(load_file(str(dense / "model.safetensors")), dense / "pytorch_model.bin")
    (dense / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="2_Dense/pytorch_model.bin"):
        check_weights(str(directory), "m", allow_pickle_weights=False)
    run = run_spec(str(directory))
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, allow_pickle_weights=True))
    rows, dead = run_variants(tmp_path, documents(SAMPLE_TEXTS[:3]), {"bin": (EmbedTask(), run)})["bin"]
    assert not dead
    got = {i: np.asarray(r["embedding"], dtype=np.float32) for i, r in rows.items()}
    _assert_parity(got, _encode(st_checkpoint("dense"), SAMPLE_TEXTS[:3]), "bin")


@pytest.mark.parametrize(("options", "message"), [
    ({"prompt_name": "title"}, "Invalid prompt_name: 'title'. The prompts of"),
    ({"truncate_dim": 64}, "truncate_dim=64 exceeds the 32 dimensions"),
])
def test_options_the_checkpoint_cannot_serve_are_refused(st_checkpoint, options, message):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(st_checkpoint("prompts"))
    with pytest.raises(ValueError, match=message):
        EmbedTask(**options).schema(config)


@pytest.mark.parametrize(("options", "message"), [
    ({"prompt": "q: ", "prompt_name": "query"}, "Pass prompt or prompt_name, not both"),
    ({"truncate_dim": 0}, "truncate_dim must be a positive integer"),
    ({"prompt_name": 3}, "prompt_name must be a string or None, got int: 3"),
    ({"pooling": "median"}, "Invalid pooling: 'median'. Valid values are: 'auto', 'mean'"),
])
def test_invalid_options_fail_at_construction(options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        EmbedTask(**options)


def test_stack_reads_every_module(st_checkpoint):
    """read_stack: modes in order, Dense layers with their activations, Normalize, prompts."""
    stack = read_stack(st_checkpoint("stacked"))
    assert stack.pooling == ("cls", "max")
    assert [(d.in_features, d.out_features, d.activation.rsplit(".", 1)[-1], d.residual)
            for d in stack.dense] == [(64, 8, "Identity", False), (8, 8, "ReLU", True)]
    assert stack.normalize and stack.include_prompt and stack.default_prompt_name is None
    assert not any(text for _, text in stack.prompts)  # sentence-transformers saves empty ones
    prompts = read_stack(st_checkpoint("prompts"))
    assert dict(prompts.prompts).items() >= PROMPTS.items() and prompts.default_prompt_name == "query"
    assert not prompts.include_prompt and prompts.dense == ()


def test_run_inference_handler_applies_prompts_and_dense_layers(st_checkpoint):
    """BertModelHandler tokenizes through the same hook: a named prompt left out of pooling,
    then Dense layers, equal to encode's."""
    from bertbeam.beam.handler import BertModelHandler
    from bertbeam.config import ModelSpec, RunSpec

    texts = SAMPLE_TEXTS[:4]
    for checkpoint, options in (("prompts", {"prompt_name": "passage"}), ("stacked", {})):
        directory = st_checkpoint(checkpoint)
        handler = BertModelHandler(EmbedTask(**options),
                                   run=RunSpec(model=ModelSpec(uri=directory, device="cpu")))
        results = handler.run_inference(texts, handler.load_model())
        got = {f"d{i}": r.inference["embedding"] for i, r in enumerate(results)}
        _assert_parity(got, _encode(directory, texts, **options), checkpoint)
