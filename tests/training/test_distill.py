"""``bertbeam distill`` (issue 26): the teacher's logits through ``bertbeam label
--keep-logits`` equal transformers'; the student keeps evenly spaced layers and loads in
``bertbeam label``; the loss is Hinton's; an interrupted teacher labelling resumes without
labelling any document twice."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bertbeam.training.config import DistillConfig
from bertbeam.training.distill import distill, drop_layers, kept_layers
from bertbeam.training.losses import distillation_loss
from bertbeam.training.soft_labels import label_corpus
from tests.conftest import read_output, run_cli, write_corpus
from tests.training.test_training import _classify_rows


def _corpus(tmp_path: Path, n: int = 24, *, gold: bool = False) -> str:
    rows = _classify_rows(n)
    texts = [" ".join(t.split()[:20]) for t in rows["text"]]  # one window in the tiny models
    columns = {"id": rows["id"], "text": texts}
    if gold:
        columns["label"] = [("negative", "neutral", "positive")[i % 3] if i % 2 else None
                            for i in range(n)]
    return write_corpus(tmp_path / "corpus" / "part-0.parquet", columns)


def _config(tmp_path: Path, teacher: str, corpus: str, **kwargs) -> DistillConfig:
    options = {"max_steps": 3, "max_length": 32, "device": "cpu", "num_threads": 1, "augment": 0,
               "learning_rate": 1e-3, **kwargs}
    return DistillConfig(teacher=teacher, corpus=corpus, output=str(tmp_path / "student"), **options)


@pytest.mark.parametrize(("teacher", "student", "kept"), [
    (6, 3, [1, 3, 5]), (12, 6, [1, 3, 5, 7, 9, 11]), (12, 4, [2, 5, 8, 11]), (2, 1, [1]), (4, 4, [0, 1, 2, 3]),
])
def test_kept_layers_are_evenly_spaced_and_end_with_the_last(teacher, student, kept):
    assert kept_layers(teacher, student) == kept


def test_more_student_layers_than_the_teacher_has_is_an_error():
    with pytest.raises(ValueError, match="student_layers must be between 1 and the teacher's 6 layers, got 7"):
        kept_layers(6, 7)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_a_pruned_student_is_the_teacher_without_the_dropped_layers(tiny_model, arch):
    """The kept layer's weights are the teacher's layer 2; the student runs, and its config
    says 1 layer."""
    import torch
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_model(arch, "classify"))
    student = drop_layers(AutoModelForSequenceClassification.from_pretrained(
        tiny_model(arch, "classify")), [1])
    assert student.config.num_hidden_layers == 1
    t, s = teacher.state_dict(), student.state_dict()
    layer = "distilbert.transformer.layer" if arch == "distilbert" else "bert.encoder.layer"
    pairs = [(k, k.replace(f"{layer}.1.", f"{layer}.0.")) for k in t if k.startswith(f"{layer}.1.")]
    assert pairs and all(torch.equal(t[a], s[b]) for a, b in pairs)
    assert not any(k.startswith(f"{layer}.1.") for k in s)
    assert student(input_ids=torch.tensor([[2, 10, 11, 3]])).logits.shape == (1, 3)


def test_the_loss_is_temperature_scaled_kl_plus_gold_cross_entropy():
    """By hand: T² KL(p_T || q_T) where a row has no gold label; (1 - w) of it plus w of the
    cross-entropy where it has one."""
    import torch
    import torch.nn.functional as F

    student = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.1, 0.0]])
    teacher = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])

    class _Model:
        def __call__(self, **inputs):
            return type("Out", (), {"logits": student})()

    t, w = 2.0, 0.25
    loss, _ = distillation_loss(t, w)(_Model(), {"input_ids": None, "teacher_logits": teacher,
                                                  "labels": torch.tensor([-1, 2])})
    p, q = F.softmax(teacher / t, -1), F.log_softmax(student / t, -1)
    kl = (p * (p.log() - q)).sum(-1) * t * t
    ce = F.cross_entropy(student[1:], torch.tensor([2]))
    expected = (kl[0] + (1 - w) * kl[1] + w * ce) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_keep_logits_writes_the_models_raw_logits(tmp_path, tiny_model):
    """`bertbeam label --task classify --keep-logits`: a `logits` column equal to
    transformers' logits (1e-4), whose softmax is the written scores."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = tiny_model("bert", "classify")
    corpus = _corpus(tmp_path, 9)
    out = tmp_path / "out"
    assert run_cli("label", "--task", "classify", "--input", corpus, "--output", out, "--model",
                   model_dir, "--device", "cpu", "--keep-logits", "--top-k", "3") == 0
    import pyarrow.parquet as pq

    rows = {r["id"]: r for r in read_output(out)}
    assert len(rows) == 9 and all(len(r["logits"]) == 3 for r in rows.values())

    source = pq.read_table(corpus).to_pydict()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = model(**tokenizer(source["text"], padding=True, return_tensors="pt")).logits.numpy()
    got = np.array([rows[i]["logits"] for i in source["id"]])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    scores = np.exp(got) / np.exp(got).sum(-1, keepdims=True)
    for i, row_id in enumerate(source["id"]):
        by_label = {x["label"]: x["score"] for x in rows[row_id]["labels"]}
        np.testing.assert_allclose([by_label[n] for n in ("negative", "neutral", "positive")],
                                   scores[i], atol=1e-5)


def test_interrupted_teacher_labelling_resumes_without_labelling_twice(tmp_path, tiny_model):
    """24 documents in shards of 8: Ctrl-C while the second shard is labelled; the rerun
    labels shards 2 and 3 only (shard 1's files untouched), and every document has its
    logits exactly once."""
    from bertbeam.core.fingerprint import model_fingerprint
    from bertbeam.training.soft_labels import _teacher_job

    teacher = tiny_model("bert", "classify")
    cfg = _config(tmp_path, teacher, _corpus(tmp_path), shard_rows=8)
    real = _teacher_job(cfg)
    labelled: list[str] = []

    def interrupt_on_second(input_url: str, output_url: str) -> None:
        if len(labelled) == 1:
            raise KeyboardInterrupt
        real(input_url, output_url)
        labelled.append(input_url.rsplit("/", 1)[-1])

    fingerprint = model_fingerprint(teacher)
    with pytest.raises(KeyboardInterrupt):
        label_corpus(cfg, fingerprint, execute_shard=interrupt_on_second)
    assert labelled == ["shard-00000.parquet"]
    first = Path(cfg.soft_labels_dir) / "labels" / "shard-00000"
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}

    def count(input_url: str, output_url: str) -> None:
        real(input_url, output_url)
        labelled.append(input_url.rsplit("/", 1)[-1])

    logits, counts = label_corpus(cfg, fingerprint, execute_shard=count)
    assert labelled == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert counts == {"shards": 3, "variants": 0, "labelled_now": 2, "dead_lettered": 0}
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == stamps
    results = read_output(Path(cfg.soft_labels_dir) / "labels" / "shard-00001")
    assert sorted(logits) == sorted(f"c{i}" for i in range(24)) and len(results) == 8
    again, counts = label_corpus(cfg, fingerprint, execute_shard=count)
    assert counts["labelled_now"] == 0 and len(labelled) == 3
    assert all(np.array_equal(again[k], logits[k]) for k in logits)


def test_distill_writes_a_student_that_bertbeam_label_loads(tmp_path, tiny_model):
    """Teacher (2 layers) -> student with 1 layer, gold labels on half the rows: a normal
    checkpoint (safetensors, the teacher's labels, 1 layer) that `bertbeam label` runs and
    `bertbeam evaluate --reference` compares with the teacher's labels."""
    teacher = tiny_model("bert", "classify")
    corpus = _corpus(tmp_path, gold=True)
    report = distill(_config(tmp_path, teacher, corpus, student_layers=1, label_column="label"))
    student = tmp_path / "student"
    config = json.loads((student / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert sorted(report["files"]) == sorted(os.listdir(student))
    assert report["distillation"]["gold_rows"] == 12 and report["steps"] == 3
    assert report["eval_rows"] == 2 and report["best"] is not None
    out = tmp_path / "labelled"
    assert run_cli("label", "--task", "classify", "--input", corpus, "--output", out,
                   "--model", student, "--device", "cpu") == 0
    soft = f"{tmp_path}/student-soft-labels/labels/*/results-*.parquet"
    gold = write_corpus(tmp_path / "gold.parquet",
                        {"id": [f"c{i}" for i in range(24)],
                         "label": [("negative", "neutral", "positive")[i % 3] for i in range(24)]})
    assert run_cli("evaluate", "--task", "classify", "--predictions", f"{out}/results-*.parquet",
                   "--gold", gold, "--reference", soft) == 0
    evaluated = json.loads((out / "_EVAL.json").read_text())
    student_labels = {r["id"]: r["label"] for r in read_output(out)}
    teacher_labels = {}
    for shard in sorted((tmp_path / "student-soft-labels" / "labels").iterdir()):
        teacher_labels.update({r["id"]: r["label"] for r in read_output(shard)})
    same = sum(student_labels[k] == teacher_labels[k] for k in teacher_labels) / 24
    assert evaluated["reference"]["rows"] == 24
    assert evaluated["reference"]["agreement"] == pytest.approx(same)
    assert evaluated["speed"]["predictions"]["docs_per_second"] > 0


def test_the_intermediate_layer_term_is_the_masked_mse_of_the_mapped_layers():
    """By hand: a student that is the teacher's layer 2 of 2 (its embeddings moved) adds
    the mean squared error of the embeddings and of that layer over real tokens, times the
    weight; a student equal to the teacher adds nothing; evaluation returns logits only."""
    import copy

    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, num_labels=3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    teacher = BertForSequenceClassification(config).eval()
    student = drop_layers(copy.deepcopy(teacher), kept_layers(2, 1)).train()
    student.bert.embeddings.word_embeddings.weight.data += 0.1
    inputs = {"input_ids": torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    batch = {**inputs, "teacher_logits": torch.zeros(2, 3), "labels": torch.tensor([-1, -1])}
    plain = distillation_loss(2.0, 0.5)
    matched = distillation_loss(2.0, 0.5, teacher=teacher, layer_map=[2], hidden_weight=3.0)
    with torch.no_grad():
        s = student(**inputs, output_hidden_states=True).hidden_states
        t = teacher(**inputs, output_hidden_states=True).hidden_states
    mask = inputs["attention_mask"].bool()
    expected = sum(F.mse_loss(s[a][mask], t[b][mask]) for a, b in ((0, 0), (1, 2)))
    loss, outputs = matched(student, batch)
    assert outputs.hidden_states is None  # Trainer's evaluation reads the logits only
    assert (loss - plain(student, batch)[0]).item() == pytest.approx(3.0 * expected.item(), rel=1e-4)
    assert matched(student.eval(), batch)[0].item() == pytest.approx(plain(student, batch)[0].item())
    same = copy.deepcopy(teacher).train()
    both = distillation_loss(2.0, 0.5, teacher=teacher, layer_map=[1, 2], hidden_weight=3.0)
    assert (both(same, batch)[0] - plain(same, batch)[0]).item() == pytest.approx(0.0, abs=1e-6)


def test_variants_are_labelled_and_never_cross_the_held_out_split(tmp_path, tiny_model):
    """24 documents, 2 variants each: the teacher labels them all (in shards, resumable), the
    held-out rows are the corpus's own documents, and no variant of a held-out document
    trains; variants carry no gold label; another number of variants labels anew."""
    from bertbeam.core.fingerprint import model_fingerprint
    from bertbeam.training.distill import _hold_out
    from bertbeam.training.soft_labels import soft_label_rows

    teacher = tiny_model("bert", "classify")
    cfg = _config(tmp_path, teacher, _corpus(tmp_path, gold=True), augment=2, label_column="label",
                  eval_fraction=0.25, shard_rows=40)
    logits, counts = label_corpus(cfg, model_fingerprint(teacher), mask_token="[MASK]")
    variants = 2 * sum(len(t.split()) >= 3 for t in _corpus_texts(cfg))
    assert counts == {"shards": 2, "variants": variants, "labelled_now": 2, "dead_lettered": 0}
    assert len(logits) == 24 + variants and variants >= 40
    names = ["negative", "neutral", "positive"]
    rows = soft_label_rows(cfg, logits, 3, {n: i for i, n in enumerate(names)})
    variant = [i for i, (r, s) in enumerate(zip(rows["ids"], rows["sources"], strict=True)) if r != s]
    assert len(variant) == variants and all(rows["gold"][i] == -1 for i in variant)
    assert int((rows["gold"] >= 0).sum()) == 12
    train_part, eval_part, _ = _hold_out(cfg, rows, rows["logits"].argmax(-1))
    held = set(eval_part.ids)
    assert held and all(rows["ids"][i] == rows["sources"][i] for i in eval_part.labels)
    trained_sources = {rows["sources"][i] for i in train_part.labels}
    assert not held & trained_sources
    dropped = sum(s in held for r, s in zip(rows["ids"], rows["sources"], strict=True) if r != s)
    assert dropped and len(train_part) + len(eval_part) + dropped == 24 + variants
    again, counts = label_corpus(cfg, model_fingerprint(teacher), mask_token="[MASK]")
    assert counts["labelled_now"] == 0 and sorted(again) == sorted(logits)
    fewer = DistillConfig(**{**cfg.__dict__, "augment": 1})  # other variants: labelled anew
    _, counts = label_corpus(fewer, model_fingerprint(teacher), mask_token="[MASK]")
    assert counts == {"shards": 2, "variants": variants // 2, "labelled_now": 2, "dead_lettered": 0}


def _corpus_texts(cfg: DistillConfig) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(cfg.corpus).column("text").to_pylist()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("hidden_weight", -1.0, "hidden_weight must be a non-negative number, got -1.0."),
    ("augment", -1, "augment must be a non-negative integer or None, got -1."),
    ("augment", 1.5, "augment must be a non-negative integer or None, got 1.5."),
])
def test_bad_distill_options_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        DistillConfig(teacher="t", corpus="c", output="o", **{field: value})


def test_evaluate_reports_both_speeds_and_both_ratios(tmp_path):
    """Each side's rate through the pipeline (docs_per_second) and over the whole command
    (written / process_seconds), and the two ratios, from the summaries beside the results."""
    from bertbeam.training.config import EvalConfig
    from bertbeam.training.evaluate import evaluate, format_report

    def side(name: str, pipeline: float, process: float) -> str:
        out = tmp_path / name
        write_corpus(out / "results-00000.parquet",
                     {"id": ["a", "b"], "label": ["x", "y"], "score": [0.9, 0.8]})
        (out / "_SUMMARY.json").write_text(json.dumps({
            "model": name, "input": "same.parquet", "written": 100,
            "docs_per_second": 100 / pipeline, "process_seconds": process}))
        return f"{out}/results-*.parquet"

    gold = write_corpus(tmp_path / "gold.parquet", {"id": ["a", "b"], "label": ["x", "y"]})
    report = evaluate(EvalConfig(task="classify", predictions=side("student", 10.0, 20.0),
                                 gold=gold, reference=side("teacher", 25.0, 35.0)))
    speed = report["speed"]
    assert speed["predictions"]["command_docs_per_second"] == pytest.approx(5.0)
    assert speed["speedup"] == pytest.approx(2.5)
    assert speed["command_speedup"] == pytest.approx(1.75, rel=1e-3)
    text = format_report(report)
    assert "10.0 docs/s through bertbeam label's pipeline, 5.0 for the whole command" in text
    assert "2.50x the reference's speed (1.75x for the whole command)" in text
