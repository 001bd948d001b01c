"""``bertbeam distill``: a smaller, faster classifier learned from a fine-tuned one, on the
users' own corpus.

1. The teacher labels the corpus, and seeded variants of its documents when the corpus is
   small (:mod:`~bertbeam.training.augment`), through bertbeam's own pipeline, keeping its
   logits (:mod:`~bertbeam.training.soft_labels`: Parquet, shard by shard, resumable).
2. The student is the teacher with some of its layers kept (evenly spaced, ending with the
   last: DistilBERT's "every other layer" for 6 -> 3), its embeddings and head included, or
   a given checkpoint with a new head.
3. The student learns the teacher's distribution, both softened by a temperature T
   (KL divergence scaled by T², Hinton et al. 2015), on rows with a gold label the gold
   label too, and the teacher's intermediate layers (TinyBERT) when it is made of them
   (:mod:`~bertbeam.training.losses`).
4. A share of the corpus's own documents is held out (never their variants): the best
   checkpoint is the one that agrees most with the teacher there; it is published as a
   normal checkpoint for ``bertbeam label``.

Classification (single-label) only: a token-classification teacher is refused.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from bertbeam.config import ModelSpec, TokenizeSpec
from bertbeam.core.engine import resolve_max_length
from bertbeam.core.fingerprint import model_fingerprint
from bertbeam.core.memory import collector_paused
from bertbeam.core.models import check_weights, load_tokenizer, resolve_model_dir
from bertbeam.run import checks
from bertbeam.tasks.classify import id2label
from bertbeam.training.config import DistillConfig
from bertbeam.training.data import Examples, TrainingDataError, split
from bertbeam.training.fit import fit, resolve_device, save_checkpoint
from bertbeam.training.loop import quiet_transformers
from bertbeam.training.losses import distillation_loss
from bertbeam.training.output import CheckpointOutput
from bertbeam.training.plan import plan_for
from bertbeam.training.soft_labels import label_corpus, soft_label_rows


def kept_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Indices of the teacher's layers a student keeps: evenly spaced, ending with the last
    (6 -> 3: [1, 3, 5]; 12 -> 6: [1, 3, 5, 7, 9, 11])."""
    if not 0 < student_layers <= teacher_layers:
        raise ValueError(f"student_layers must be between 1 and the teacher's {teacher_layers} "
                         f"layers, got {student_layers}.")
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def _layer_list(model: Any) -> tuple[Any, str]:
    """(parent module, attribute) of the encoder's list of layers: the ModuleList with as
    many modules as the config has layers."""
    import torch  # the model stack loads where it is used (start-up)

    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and name:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr
    raise ValueError(f"Cannot find the {n} encoder layers of {type(model).__name__}; "
                     "give a smaller checkpoint with --student instead.")


def drop_layers(model: Any, keep: list[int]) -> Any:
    """``model`` with only the encoder layers ``keep`` (in place); its config says so."""
    import torch  # the model stack loads where it is used (start-up)

    parent, attr = _layer_list(model)
    layers = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList([layers[i] for i in keep]))
    model.config.num_hidden_layers = len(keep)
    return model


def _load_teacher_config(cfg: DistillConfig) -> tuple[str, Any, list[str]]:
    """(local dir, config, label names) of a single-label sequence classifier."""
    local_dir = resolve_model_dir(cfg.teacher, cfg.cache_dir)
    check_weights(local_dir, cfg.teacher, allow_pickle_weights=cfg.allow_pickle_weights)
    config = checks.load_config(local_dir, cfg.teacher, trust_remote_code=False)
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise TrainingDataError(
            f"Teacher {cfg.teacher!r} is not a sequence classifier (architectures: "
            f"{', '.join(architectures) or 'none'}); distill needs one, e.g. from bertbeam train "
            "--task classify.")
    if getattr(config, "problem_type", None) == "multi_label_classification":
        raise TrainingDataError(f"Teacher {cfg.teacher!r} is multi-label; distill handles "
                                "single-label classifiers for now.")
    return local_dir, config, id2label(config)


def _student(cfg: DistillConfig, teacher_dir: str, names: list[str]
             ) -> tuple[Any, Any, str, list[int] | None]:
    """(model, tokenizer, description, the teacher's layers it kept or None) of the student
    before training."""
    import transformers  # the model stack loads where it is used (start-up)

    # the model stack loads where it is used (start-up)
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    transformers.set_seed(cfg.seed)
    safe = None if cfg.allow_pickle_weights else True
    labels = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    if cfg.student is not None:
        local = resolve_model_dir(cfg.student, cfg.cache_dir)
        check_weights(local, cfg.student, allow_pickle_weights=cfg.allow_pickle_weights)
        model = AutoModelForSequenceClassification.from_pretrained(
            local, num_labels=len(names), ignore_mismatched_sizes=True, use_safetensors=safe,
            **labels)
        tokenizer = load_tokenizer(local, ModelSpec(uri=cfg.student, cache_dir=cfg.cache_dir))
        return model, tokenizer, f"{cfg.student} ({model.config.num_hidden_layers} layers)", None
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=safe)
    n = model.config.num_hidden_layers
    keep = kept_layers(n, cfg.student_layers or -(-n // 2))
    drop_layers(model, keep)
    tokenizer = load_tokenizer(teacher_dir, ModelSpec(uri=cfg.teacher, cache_dir=cfg.cache_dir))
    return model, tokenizer, (f"the teacher's layers {', '.join(str(i + 1) for i in keep)} of "
                              f"{n} ({len(keep)} layers)"), keep


def _layer_teacher(cfg: DistillConfig, teacher_dir: str, keep: list[int] | None,
                   device: str) -> tuple[Any, list[int] | None]:
    """(the teacher in eval mode on ``device``, the teacher layer of each student layer,
    counted from 1) for the intermediate-layer term; (None, None) when it is off."""
    if keep is None or cfg.hidden_weight <= 0:
        return None, None
    # the model stack loads where it is used (start-up)
    from transformers import AutoModelForSequenceClassification

    safe = None if cfg.allow_pickle_weights else True
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=safe)
    teacher.requires_grad_(False)
    return teacher.to(device).eval(), [i + 1 for i in keep]


def _collator(tokenizer: Any, pad_multiple: int | None):
    """Pads ids like DataCollatorWithPadding; stacks teacher logits and labels."""
    import torch  # the model stack loads where it is used (start-up)

    # the model stack loads where it is used (start-up)
    from transformers import DataCollatorWithPadding

    pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = pad([{"input_ids": f["input_ids"]} for f in features])
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        batch["teacher_logits"] = torch.tensor(np.stack([f["teacher_logits"] for f in features]),
                                               dtype=torch.float32)
        return batch

    return collate


def distill(cfg: DistillConfig) -> dict[str, Any]:
    """Teacher soft labels on ``cfg.corpus`` -> a student checkpoint in ``cfg.output``.

    Returns the report written as ``_TRAIN.json`` (the plan, the distillation's settings,
    the soft labels' counts, the agreement with the teacher per evaluation).

    Example::

        report = distill(DistillConfig(teacher="models/topics", corpus="corpus/*.parquet",
                                       output="models/topics-3l", student_layers=3))
        print(report["best"]["eval_accuracy"])  # agreement with the teacher, held out
    """
    import torch  # the model stack loads where it is used (start-up)

    threads = torch.get_num_threads()
    try:
        return _distill(cfg)
    finally:
        torch.set_num_threads(threads)


def _distill(cfg: DistillConfig) -> dict[str, Any]:
    started = time.perf_counter()
    output = CheckpointOutput(cfg.output)
    output.check()
    teacher_dir, _, names = _load_teacher_config(cfg)
    mask_token = load_tokenizer(teacher_dir, ModelSpec(uri=cfg.teacher, cache_dir=cfg.cache_dir)
                                ).mask_token
    logits, counts = label_corpus(cfg, model_fingerprint(teacher_dir), mask_token=mask_token)
    rows = soft_label_rows(cfg, logits, len(names), {n: i for i, n in enumerate(names)})
    if not rows["ids"]:
        raise TrainingDataError(f"The teacher labelled no document of {cfg.corpus!r}.")
    agree = rows["logits"].argmax(-1)
    train_rows, eval_rows, source = _hold_out(cfg, rows, agree)
    device, bf16 = resolve_device(cfg.device, cfg.num_threads)
    with collector_paused():
        model, tokenizer, described, keep = _student(cfg, teacher_dir, names)
        teacher, layer_map = _layer_teacher(cfg, teacher_dir, keep, device)
    max_length = resolve_max_length(tokenizer, model.config, teacher_dir,
                                    TokenizeSpec(max_length=cfg.max_length))

    def features(part: Examples, labels: np.ndarray) -> list[dict[str, Any]]:
        enc = tokenizer(part.texts, truncation=True, max_length=max_length)["input_ids"]
        return [{"input_ids": ids, "labels": int(labels[i]), "teacher_logits": rows["logits"][i]}
                for ids, i in zip(enc, part.labels, strict=True)]

    train_features = features(train_rows, rows["gold"])
    eval_features = features(eval_rows, agree) if eval_rows is not None and len(eval_rows) else None
    plan = plan_for(cfg, train_rows=len(train_features), eval_rows=len(eval_features or ()),
                    eval_source=source, max_length=max_length,
                    hidden_size=getattr(model.config, "hidden_size", None))
    gold = int((rows["gold"] >= 0).sum())
    print(f"bertbeam distill: {len(rows['ids']) - counts['variants']:,} documents and "
          f"{counts['variants']:,} augmented variants labelled by the teacher; student "
          f"{described}; temperature {cfg.temperature:g}"
          + (f", gold labels on {gold:,} rows (weight {cfg.gold_weight:g})" if gold else "")
          + (f"; intermediate layers {', '.join(map(str, layer_map))} matched (weight "
             f"{cfg.hidden_weight:g})" if layer_map else ""), file=sys.stderr)
    for line in plan.describe().splitlines():
        print(f"bertbeam distill: {line}", file=sys.stderr, flush=True)
    with output:
        fitted = fit(model=model, tokenizer=tokenizer, train_features=train_features,
                     eval_features=eval_features, plan=plan, names=names, task="classify",
                     multi_label=False, seed=cfg.seed, weight_decay=cfg.weight_decay,
                     max_grad_norm=cfg.max_grad_norm, token_budget=cfg.token_budget,
                     device=device, bf16=bf16, scratch=output.staging,
                     collator=_collator(tokenizer, 8 if device == "cuda" else None),
                     loss_fn=distillation_loss(cfg.temperature, cfg.gold_weight, teacher=teacher,
                                               layer_map=layer_map,
                                               hidden_weight=cfg.hidden_weight))
        save_checkpoint(fitted, output.model_dir)
        report = {
            "config": asdict(cfg), "plan": plan.as_dict(), "labels": names,
            "distillation": {"teacher": cfg.teacher, "student": described,
                             "student_layers": model.config.num_hidden_layers,
                             "matched_teacher_layers": layer_map,
                             "hidden_weight": cfg.hidden_weight if layer_map else 0.0,
                             "soft_labels": cfg.soft_labels_dir, "gold_rows": gold, **counts,
                             "eval_metric": "accuracy = agreement with the teacher"},
            "train_rows": plan.train_rows, "eval_rows": plan.eval_rows,
            "steps": fitted.trainer.state.global_step, "history": fitted.history,
            "best": fitted.best, "train_seconds": fitted.train_seconds,
            "train_tokens_per_second": fitted.tokens_per_second,
            "total_seconds": time.perf_counter() - started, "device": device,
            "dtype": "bfloat16 autocast" if bf16 else "float32",
        }
        output.publish(report)
    best = report["best"]
    print(f"bertbeam distill: wrote {cfg.output} ({model.config.num_hidden_layers} layers"
          + (f", agreement with the teacher on held-out rows {best['eval_accuracy']:.4f}"
             if best else "") + f", {fitted.train_seconds:.0f} s training)", file=sys.stderr)
    return report


def _hold_out(cfg: DistillConfig, rows: dict[str, Any], agree: np.ndarray
              ) -> tuple[Examples, Examples | None, str]:
    """(training rows, held-out rows, why): the corpus's own documents split, stratified by
    the teacher's label; the variants of the training documents train, those of the
    held-out ones are left out. Each row's label is its index in ``rows``."""
    ids, texts, sources = rows["ids"], rows["texts"], rows["sources"]
    every = Examples(ids, texts, list(range(len(ids))))
    own = [i for i, (row_id, source) in enumerate(zip(ids, sources, strict=True)) if row_id == source]
    if cfg.eval_fraction <= 0:
        return every, None, "no evaluation (--eval-fraction 0): the last step's model is kept"
    total = len(own)
    fraction = min(cfg.eval_fraction, cfg.max_eval_rows / total)
    by_teacher = Examples([ids[i] for i in own], [texts[i] for i in own],
                          [int(agree[i]) for i in own])
    _, eval_part = split(by_teacher, fraction, cfg.seed, stratify=True)
    if not len(eval_part):
        raise TrainingDataError(
            f"Holding out {cfg.eval_fraction:.0%} of {total} labelled document(s) leaves no "
            "evaluation row; give a larger --eval-fraction, or --eval-fraction 0 to train "
            "without evaluation.")
    held = set(eval_part.ids)
    index = {row_id: i for i, row_id in enumerate(ids)}
    train_part = every.subset([i for i, s in enumerate(sources) if s not in held])
    return train_part, Examples(eval_part.ids, eval_part.texts, [index[i] for i in eval_part.ids]), (
        f"{len(eval_part):,} of the corpus's {total:,} documents held out ({fraction:.0%}, "
        "stratified by the teacher's label, without their variants): the student's agreement "
        "with the teacher there picks the best checkpoint")
