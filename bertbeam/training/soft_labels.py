"""The teacher's soft labels for ``bertbeam distill``: the corpus labelled by
``bertbeam label --task classify --keep-logits``'s own job, shard by shard, resumable.

The corpus is copied once into shards of ``shard_rows`` documents (``id``, ``text`` and
``source``: the document a row is, or is a variant of) under the soft-labels directory,
after its own documents the augmented variants (:mod:`~bertbeam.training.augment`), with a
manifest naming the corpus files (sizes), the teacher's fingerprint, the shard size and the
augmentation. Each shard is labelled by one
:func:`bertbeam.run.job.execute` into a folder of its own, which writes its results
atomically and its ``_SUMMARY.json`` last; a shard with a summary is done. A rerun after an
interruption labels only the shards without one, so no labelled document is labelled
again; a changed corpus or teacher starts over (the old labels would be stale).

Layout::

    SOFT/_SHARDS.json                  the manifest
    SOFT/inputs/shard-00000.parquet    id, text, source
    SOFT/labels/shard-00000/           results-*.parquet (id, label, score, labels, logits, ...),
                                       dead_letter-*.parquet, _SUMMARY.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.beam.reading import Columns
from bertbeam.config import ModelSpec, RunSpec, TokenizeSpec
from bertbeam.filesystems import url_to_fs, write_json_atomically
from bertbeam.run.control import RunControl
from bertbeam.run.job import Job, execute
from bertbeam.tasks.classify import ClassifyTask
from bertbeam.training.augment import CHANGE, augment, variants_per_document
from bertbeam.training.config import AUGMENT_MOST, AUGMENT_TO_ROWS, DistillConfig
from bertbeam.training.data import TrainingDataError, expand, read_columns

MANIFEST = "_SHARDS.json"


def _manifest(cfg: DistillConfig, teacher_fingerprint: str) -> dict[str, Any]:
    files = []
    for url in expand(cfg.corpus):
        fs, path = url_to_fs(url)
        files.append({"url": url, "size": fs.size(path)})
    return {"corpus": files, "teacher": teacher_fingerprint, "shard_rows": cfg.shard_rows,
            "id_column": cfg.id_column, "text_column": cfg.text_column,
            "augment": {"variants": cfg.augment, "to_rows": AUGMENT_TO_ROWS, "most": AUGMENT_MOST,
                        "change": CHANGE, "seed": cfg.seed}}


def _write_shards(cfg: DistillConfig, root: str, fs: Any, mask_token: str | None) -> tuple[int, int]:
    """Copies the corpus's ids and texts, then their augmented variants, into shards;
    returns (shards, variants)."""
    table = read_columns(cfg.corpus, [cfg.id_column, cfg.text_column])
    ids = [None if i is None else str(i) for i in table.column(cfg.id_column).to_pylist()]
    texts = table.column(cfg.text_column).to_pylist()
    usable = [(i, t) for i, t in zip(ids, texts, strict=True) if i is not None and t]
    n = variants_per_document(cfg.augment, len(usable), AUGMENT_TO_ROWS, AUGMENT_MOST)
    extra = augment([i for i, _ in usable], [t for _, t in usable], variants=n,
                    mask_token=mask_token, change=CHANGE, seed=cfg.seed)
    clash = set(extra.ids).intersection(ids)
    if clash:
        raise TrainingDataError(
            f"Corpus id {sorted(clash)[0]!r} looks like an augmented variant's id; give "
            "--augment 0, or ids without '~aug'.")
    table = pa.table({"id": pa.array(ids + extra.ids, pa.string()),
                      "text": pa.array(texts + extra.texts, pa.string()),
                      "source": pa.array(ids + extra.sources, pa.string())})
    fs.makedirs(f"{root}/inputs", exist_ok=True)
    count = max(1, -(-table.num_rows // cfg.shard_rows))
    for i in range(count):
        with fs.open(f"{root}/inputs/shard-{i:05d}.parquet", "wb") as f:
            pq.write_table(table.slice(i * cfg.shard_rows, cfg.shard_rows), f)
    return count, len(extra.ids)


def label_corpus(cfg: DistillConfig, teacher_fingerprint: str, *, mask_token: str | None = None,
                 execute_shard: Any = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The teacher's logits of every document it labelled, the corpus's and their augmented
    variants' (id -> float32 vector), and counts: ``shards``, ``variants``, ``labelled_now``
    (shards labelled by this call), ``dead_lettered``.

    ``mask_token`` is the teacher tokenizer's (augmentation masks words with it);
    ``execute_shard(input_url, output_url)`` labels one shard (default: the classify job
    with ``keep_logits``)."""
    fs, root = url_to_fs(cfg.soft_labels_dir)
    root = root.rstrip("/")
    wanted = _manifest(cfg, teacher_fingerprint)
    manifest_path = f"{root}/{MANIFEST}"
    current = None
    if fs.exists(manifest_path):
        with fs.open(manifest_path, "r") as f:
            current = json.load(f)
    if current is None or {k: v for k, v in current.items() if k not in ("shards", "variants")} != wanted:
        if fs.exists(root):
            for sub in ("inputs", "labels"):
                if fs.exists(f"{root}/{sub}"):
                    fs.rm(f"{root}/{sub}", recursive=True)
        fs.makedirs(root, exist_ok=True)
        shards, variants = _write_shards(cfg, root, fs, mask_token)
        write_json_atomically(fs.unstrip_protocol(root), MANIFEST,
                              {**wanted, "shards": shards, "variants": variants})
    else:
        shards, variants = int(current["shards"]), int(current.get("variants", 0))
    execute_shard = execute_shard or _teacher_job(cfg)
    labelled_now = 0
    for i in range(shards):
        out = f"{root}/labels/shard-{i:05d}"
        if fs.exists(f"{out}/_SUMMARY.json"):
            continue
        print(f"bertbeam distill: the teacher labels shard {i + 1} of {shards}", file=sys.stderr,
              flush=True)
        execute_shard(fs.unstrip_protocol(f"{root}/inputs/shard-{i:05d}.parquet"),
                      fs.unstrip_protocol(out))
        labelled_now += 1
    results = read_columns(fs.unstrip_protocol(f"{root}/labels/*/results-*.parquet"),
                           ["id", "logits"])
    dead = 0
    for i in range(shards):
        with fs.open(f"{root}/labels/shard-{i:05d}/_SUMMARY.json", "r") as f:
            dead += int(json.load(f).get("dead_lettered") or 0)
    logits = results.column("logits").combine_chunks()
    width = len(logits[0]) if len(logits) else 0
    values = logits.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, width)
    by_id = dict(zip(results.column("id").to_pylist(), values, strict=True))
    return by_id, {"shards": shards, "variants": variants, "labelled_now": labelled_now,
                   "dead_lettered": dead}


def _teacher_job(cfg: DistillConfig):
    """One shard through ``bertbeam label --task classify --keep-logits``'s job."""
    run = RunSpec(
        model=ModelSpec(uri=cfg.teacher, device=cfg.device, num_threads=cfg.num_threads,
                        allow_pickle_weights=cfg.allow_pickle_weights, cache_dir=cfg.cache_dir),
        tokenize=TokenizeSpec(max_length=cfg.max_length))

    def execute_shard(input_url: str, output_url: str) -> None:
        job = Job(task=ClassifyTask(keep_logits=True), run=run, input=input_url,
                  output=output_url, columns=Columns(id="id", text="text"),
                  control=RunControl(report=False))
        summary = execute(job, PipelineOptions([]))
        if summary is not None:
            print(f"bertbeam distill: {summary['written']:,} documents labelled "
                  f"({summary.get('docs_per_second') or 0:.1f} docs/s), "
                  f"{summary['dead_lettered']} dead-lettered", file=sys.stderr, flush=True)

    return execute_shard


def soft_label_rows(cfg: DistillConfig, logits: dict[str, np.ndarray], n_labels: int,
                    label_index: dict[str, int]) -> dict[str, Any]:
    """The documents the teacher labelled, the corpus's first, then their variants: ``ids``,
    ``texts``, ``sources`` (the corpus document each row is or is a variant of),
    ``logits`` [n, labels] and ``gold`` (the label's index; -1 where there is none, and on
    every variant); a gold label the teacher does not know is an error."""
    fs, root = url_to_fs(cfg.soft_labels_dir)
    inputs = read_columns(fs.unstrip_protocol(f"{root.rstrip('/')}/inputs/*.parquet"),
                          ["id", "text", "source"])
    gold_of: dict[str, Any] = {}
    if cfg.label_column:
        table = read_columns(cfg.corpus, [cfg.id_column, cfg.label_column])
        gold_of = dict(zip(map(str, table.column(cfg.id_column).to_pylist()),
                           table.column(cfg.label_column).to_pylist(), strict=True))
    ids, texts, sources, gold, rows = [], [], [], [], []
    for row_id, text, source in zip(inputs.column("id").to_pylist(),
                                    inputs.column("text").to_pylist(),
                                    inputs.column("source").to_pylist(), strict=True):
        vector = logits.get(row_id) if row_id is not None else None
        if vector is None:  # dead-lettered by the teacher's job (its reason is there)
            continue
        if len(vector) != n_labels:
            raise TrainingDataError(
                f"The soft labels have {len(vector)} logits a row but the teacher has {n_labels} "
                f"labels; remove {cfg.soft_labels_dir!r} to label the corpus again.")
        label = gold_of.get(row_id) if row_id == source else None
        if label is not None and str(label).strip():
            if str(label) not in label_index:
                raise TrainingDataError(
                    f"Gold label {label!r} (row {row_id!r}) is not one of the teacher's labels "
                    f"({', '.join(label_index)}); the student can only learn the teacher's.")
            gold.append(label_index[str(label)])
        else:
            gold.append(-1)
        ids.append(row_id)
        texts.append(text)
        sources.append(source)
        rows.append(vector)
    return {"ids": ids, "texts": texts, "sources": sources,
            "gold": np.array(gold, dtype=np.int64),
            "logits": np.stack(rows) if rows else np.zeros((0, n_labels), np.float32)}
