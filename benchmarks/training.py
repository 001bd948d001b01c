"""The reference fine-tune of issue 26: plain transformers, no bertbeam.

AutoModelForSequenceClassification on the embedded all-MiniLM-L6-v2, AdamW at 1e-4 with a
linear warm-up (10% of the steps) and decay, batches of 16 rows, 128 tokens, 4 epochs, all
the training rows; accuracy on the test rows. Group by length (Trainer's own option:
random mega-batches sorted by length) keeps the padding, and so the time on a shared CPU,
down; it changes which rows share a batch, not the recipe (``train_sampling_strategy``). Compare with ``bertbeam train`` with its
defaults on the same files (docs/training.md).

    python -m benchmarks.training demo/train.parquet demo/test.parquet [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("train")
    p.add_argument("test")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=float, default=4)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()

    import numpy as np
    import pyarrow.parquet as pq
    import torch
    import transformers
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from bertbeam.config import EMBEDDED_MODEL
    from bertbeam.core.models import resolve_model_dir

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    base = resolve_model_dir(EMBEDDED_MODEL, None)
    train, test = pq.read_table(args.train).to_pydict(), pq.read_table(args.test).to_pydict()
    names = sorted(set(train["label"]))
    index = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(base)

    def rows(data):
        enc = tokenizer(data["text"], truncation=True, max_length=128)
        return [{"input_ids": ids, "attention_mask": mask, "labels": index[label]}
                for ids, mask, label in zip(enc["input_ids"], enc["attention_mask"],
                                            data["label"], strict=True)]

    transformers.set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(names), id2label=dict(enumerate(names)), label2id=index)
    targs = TrainingArguments(
        output_dir="/tmp/bertbeam-reference", num_train_epochs=args.epochs,
        per_device_train_batch_size=16, per_device_eval_batch_size=64,
        learning_rate=args.learning_rate, warmup_steps=0.1, lr_scheduler_type="linear",
        weight_decay=0.01, seed=args.seed, use_cpu=True, save_strategy="no",
        train_sampling_strategy="group_by_length",
        eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=rows(train),
                      data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    # The label ids come back in the predictions' order: with group_by_length Trainer's
    # evaluation sampler reorders the rows too.
    out = trainer.predict(rows(test))
    predictions, gold = out.predictions.argmax(-1), np.asarray(out.label_ids)
    assert sorted(gold.tolist()) == sorted(index[x] for x in test["label"])
    print(json.dumps({"reference": "plain transformers Trainer", "epochs": args.epochs,
                      "learning_rate": args.learning_rate, "batch": 16, "max_length": 128,
                      "threads": args.threads, "train_rows": len(train["text"]),
                      "steps": trainer.state.global_step, "train_seconds": round(seconds, 1),
                      "accuracy": float((predictions == gold).mean())}))


if __name__ == "__main__":
    main()
