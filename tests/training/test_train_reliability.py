"""``bertbeam train`` and ``bertbeam evaluate`` keep the promise (issue 27): nothing written
through a link planted in the output, no stale model file beside a new checkpoint, no
staging folder left by an interrupted run, and one line (exit 2) for a user's mistake:
invalid UTF-8, a float label column, too few rows to hold any out, pickle-only weights,
labels that share nothing with the gold rows."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from bertbeam.training import TrainConfig, train
from bertbeam.training.output import STAGING_PREFIX
from tests.conftest import run_cli, write_corpus
from tests.training.test_training import _classify_rows


def _train_cli(*argv, model: str) -> int:
    return run_cli("train", "--task", "classify", *argv, "--model", model, "--max-steps", "1",
                   "--device", "cpu", "--max-length", "32", "--num-threads", "1")


def _one_line_error(capsys, text: str, prog: str = "train") -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"bertbeam {prog}: error: "), err
    assert text in err[-1], err[-1]
    assert not any("Traceback" in line for line in err), err
    return err[-1]


@pytest.fixture(scope="module")
def rows_path(tmp_path_factory) -> str:
    return write_corpus(tmp_path_factory.mktemp("rows") / "train.parquet", _classify_rows(24))


@pytest.mark.parametrize("name", ["config.json", "_TRAIN.json"])
def test_a_link_planted_in_the_output_is_refused_not_written_through(tmp_path, tiny_model, capsys,
                                                                     rows_path, name):
    """An earlier checkpoint's folder with a link where bertbeam writes a file: exit 2, one
    line naming the link, and the file it points to unchanged."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "_TRAIN.json").write_text(json.dumps({"files": ["config.json", "_TRAIN.json"]}))
    (out / "config.json").write_text("{}")
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("precious")
    (out / name).unlink()
    (out / name).symlink_to(victim)
    assert _train_cli("--train", rows_path, "--output", out, model=tiny_model("bert", "base")) == 2
    _one_line_error(capsys, "is a symbolic link")
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("name", ["_EVAL.json", "confusion_matrix.png"])
def test_evaluate_refuses_a_link_planted_in_its_output(tmp_path, capsys, name):
    gold = write_corpus(tmp_path / "gold.parquet", {"id": ["a", "b"], "label": ["x", "y"]})
    preds = write_corpus(tmp_path / "out" / "results-0.parquet", {"id": ["a", "b"], "label": ["x", "x"]})
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("precious")
    (tmp_path / "out" / name).symlink_to(victim)
    assert run_cli("evaluate", "--task", "classify", "--predictions", preds, "--gold", gold) == 2
    _one_line_error(capsys, "is a symbolic link", "evaluate")
    assert victim.read_text() == "precious"


def test_another_models_folder_is_refused_and_left_as_it_was(tmp_path, tiny_model, capsys, rows_path):
    """A sentence-transformers folder (pytorch_model.bin, modules.json) is not an earlier
    checkpoint of bertbeam train: one line, nothing in it touched."""
    out = tmp_path / "st-model"
    out.mkdir()
    for name in ("pytorch_model.bin", "modules.json"):
        (out / name).write_text(name)
    assert _train_cli("--train", rows_path, "--output", out, model=tiny_model("bert", "base")) == 2
    _one_line_error(capsys, "is not empty (modules.json, pytorch_model.bin) and holds no earlier "
                            "bertbeam checkpoint")
    assert sorted(os.listdir(out)) == ["modules.json", "pytorch_model.bin"]


def test_an_earlier_checkpoint_is_replaced_whole(tmp_path, tiny_model, rows_path):
    """Training again into a checkpoint's folder: the files of the earlier one that the new
    one does not have are gone; a file the earlier one did not list is left alone."""
    model, out = tiny_model("bert", "base"), tmp_path / "model"
    assert _train_cli("--train", rows_path, "--output", out, model=model) == 0
    first = json.loads((out / "_TRAIN.json").read_text())
    assert sorted(first["files"]) == sorted(os.listdir(out))
    (out / "pytorch_model.bin").write_text("stale")
    (out / "notes.txt").write_text("mine")
    first["files"].append("pytorch_model.bin")
    (out / "_TRAIN.json").write_text(json.dumps(first))
    assert _train_cli("--train", rows_path, "--output", out, model=model) == 0
    names = sorted(os.listdir(out))
    assert "pytorch_model.bin" not in names and "notes.txt" in names
    assert sorted(json.loads((out / "_TRAIN.json").read_text())["files"]) == \
        sorted(n for n in names if n != "notes.txt")


def test_an_interrupted_run_leaves_no_staging_folder(tmp_path, tiny_model, rows_path, monkeypatch):
    """Ctrl-C while the checkpoint is being saved: the staging folder (model-sized) is gone
    and the output holds nothing else; a folder left by a run killed outright is removed by
    the next run."""
    from bertbeam.training import loop

    out = tmp_path / "model"
    real_save = loop.save_checkpoint

    def save_then_interrupt(fitted, directory):
        real_save(fitted, directory)
        assert os.listdir(directory)  # the model is there, in the staging folder
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_interrupt)
    config = TrainConfig(task="classify", train=rows_path, output=str(out),
                         model=tiny_model("bert", "base"), max_steps=1, max_length=32,
                         device="cpu", num_threads=1)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert os.listdir(out) == []
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    killed = out / f"{STAGING_PREFIX}killed"
    (killed / "model").mkdir(parents=True)
    (killed / "model" / "model.safetensors").write_bytes(b"0" * 1024)
    train(config)
    assert not [n for n in os.listdir(out) if n.startswith(STAGING_PREFIX)]
    assert (out / "model.safetensors").exists()


def test_invalid_utf8_text_is_skipped_and_counted_by_id(tmp_path, tiny_model, capsys):
    rows = _classify_rows(24)
    raw = [t.encode() for t in rows["text"]]
    raw[5] = b"caf\xe9 au lait"  # Latin-1, not UTF-8
    text = pa.array(raw, type=pa.binary()).view(pa.string())
    path = write_corpus(tmp_path / "latin1.parquet", {"id": rows["id"], "text": text,
                                                      "label": rows["label"]})
    report = train(TrainConfig(task="classify", train=path, output=str(tmp_path / "m"),
                               model=tiny_model("bert", "base"), max_steps=1, max_length=32,
                               device="cpu", num_threads=1))
    assert report["skipped"] == {"text not valid UTF-8": {"rows": 1, "first_ids": ["c5"]}}
    assert report["train_rows"] + report["eval_rows"] == 23
    assert "skipped 1 rows: 1 text not valid UTF-8 (ids: c5)" in capsys.readouterr().err


def test_a_float_label_column_is_one_line_naming_it(tmp_path, tiny_model, capsys):
    path = write_corpus(tmp_path / "floats.parquet",
                        {"text": ["a b"] * 20, "label": [float(i % 2) for i in range(20)]})
    assert _train_cli("--train", path, "--output", tmp_path / "m", model=tiny_model("bert", "base")) == 2
    line = _one_line_error(capsys, "Label column 'label' holds double numbers; labels must be "
                                   "strings or integers")
    assert "null or empty label" not in line


def test_too_few_rows_to_hold_out_says_what_to_do(tmp_path, tiny_model, capsys):
    path = write_corpus(tmp_path / "five.parquet",
                        {"text": ["a b", "c d", "e f", "g h", "i j"], "label": ["x", "y", "x", "y", "x"]})
    assert _train_cli("--train", path, "--output", tmp_path / "m", model=tiny_model("bert", "base")) == 2
    _one_line_error(capsys, "Holding out 10% of 5 usable training row(s) leaves no evaluation row")
    assert _train_cli("--train", path, "--output", tmp_path / "m", "--eval-fraction", "0",
                      model=tiny_model("bert", "base")) == 0


def test_pickle_only_start_weights_need_the_opt_in(tmp_path, tiny_model, capsys, rows_path):
    """As for embed and label: a start checkpoint with only pytorch_model.bin is refused
    unless --allow-pickle-weights is given."""
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model("bert", "base"), pickled)
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    assert (pickled / "pytorch_model.bin").exists() and not (pickled / "model.safetensors").exists()
    assert _train_cli("--train", rows_path, "--output", tmp_path / "m", model=str(pickled)) == 2
    _one_line_error(capsys, "has only pickle-based weights (pytorch_model.bin)")
    assert not (tmp_path / "m").exists()
    assert _train_cli("--train", rows_path, "--output", tmp_path / "m", "--allow-pickle-weights",
                      model=str(pickled)) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_disjoint_labels_of_model_and_gold_are_an_error(tmp_path, tiny_model, capsys):
    """A classifier trained on other label names than the gold rows' (negative / neutral /
    positive against cat / dog): not accuracy 0, one line saying so. Without a summary
    naming the model, predictions that share no label with gold are a warning."""
    gold = write_corpus(tmp_path / "gold.parquet", {"id": ["a", "b", "c"], "label": ["cat", "dog", "cat"]})
    preds = write_corpus(tmp_path / "out" / "results-0.parquet",
                         {"id": ["a", "b", "c"], "label": ["negative", "positive", "negative"]})
    assert run_cli("evaluate", "--task", "classify", "--predictions", preds, "--gold", gold) == 0
    err = capsys.readouterr().err
    assert "bertbeam evaluate: warning: none of the predicted labels (negative, positive) occurs " \
           "in the gold labels (cat, dog)" in err
    (tmp_path / "out" / "_SUMMARY.json").write_text(json.dumps(
        {"task": "classify", "model": tiny_model("bert", "classify")}))
    (tmp_path / "out" / "_EVAL.json").unlink()
    assert run_cli("evaluate", "--task", "classify", "--predictions", preds, "--gold", gold) == 2
    _one_line_error(capsys, "None of the model's labels (negative, neutral, positive) occurs in "
                            "the gold labels (cat, dog)", "evaluate")
    assert not Path(tmp_path / "out" / "_EVAL.json").exists()


def test_invalid_utf8_words_name_the_column():
    """ner words cannot be skipped one by one (a list column): one line naming the column."""
    from bertbeam.training.data import Skips, TrainingDataError, ner_examples

    words = pa.array([[b"Ada", b"Lovelace"], [b"caf\xe9"]], type=pa.list_(pa.binary()))
    table = pa.table({"tokens": words.cast(pa.list_(pa.binary())).view(pa.list_(pa.string())),
                      "tags": [["B-PER", "I-PER"], ["O"]]})
    with pytest.raises(TrainingDataError, match="Column 'tokens' or 'tags' holds a string that is "
                                                "not valid UTF-8"):
        ner_examples(table, tokens_column="tokens", tags_column="tags", text_column="text",
                     id_column="id", skips=Skips())
