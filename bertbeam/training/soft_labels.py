"""The teacher's soft labels for ``bertbeam distill``: the corpus labelled by
``bertbeam label --task classify --keep-logits``'s own job, shard by shard, resumable.

The corpus is copied once into shards of ``shard_rows`` documents (``id`` and text only)
under the soft-labels directory, with a manifest naming the corpus files (sizes), the
teacher's fingerprint and the shard size. Each shard is labelled by one
:func:`bertbeam.run.job.execute` into a folder of its own, which writes its results
atomically and its ``_SUMMARY.json`` last; a shard with a summary is done. A rerun after an
interruption labels only the shards without one, so no labelled document is labelled
again; a changed corpus or teacher starts over (the old labels would be stale).

Layout::

    SOFT/_SHARDS.json                  the manifest
    SOFT/inputs/shard-00000.parquet    id, text
    SOFT/labels/shard-00000/           results-*.parquet (id, label, score, labels, logits, ...),
                                       dead_letter-*.parquet, _SUMMARY.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from bertbeam.beam.reading import Columns
from bertbeam.config import ModelSpec, RunSpec, TokenizeSpec
from bertbeam.filesystems import url_to_fs, write_json_atomically
from bertbeam.run.control import RunControl
from bertbeam.run.job import Job, execute
from bertbeam.tasks.classify import ClassifyTask
from bertbeam.training.config import DistillConfig
from bertbeam.training.data import TrainingDataError, expand, read_columns

MANIFEST = "_SHARDS.json"


def _manifest(cfg: DistillConfig, teacher_fingerprint: str) -> dict[str, Any]:
    files = []
    for url in expand(cfg.corpus):
        fs, path = url_to_fs(url)
        files.append({"url": url, "size": fs.size(path)})
    return {"corpus": files, "teacher": teacher_fingerprint, "shard_rows": cfg.shard_rows,
            "id_column": cfg.id_column, "text_column": cfg.text_column}


def _write_shards(cfg: DistillConfig, root: str, fs: Any) -> int:
    """Copies the corpus's ids and texts into shards; returns how many."""
    table = read_columns(cfg.corpus, [cfg.id_column, cfg.text_column])
    table = table.select([cfg.id_column, cfg.text_column]).rename_columns(["id", "text"])
    fs.makedirs(f"{root}/inputs", exist_ok=True)
    count = max(1, -(-table.num_rows // cfg.shard_rows))
    for i in range(count):
        with fs.open(f"{root}/inputs/shard-{i:05d}.parquet", "wb") as f:
            pq.write_table(table.slice(i * cfg.shard_rows, cfg.shard_rows), f)
    return count


def label_corpus(cfg: DistillConfig, teacher_fingerprint: str, *,
                 execute_shard: Any = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The teacher's logits of every corpus document it labelled (id -> float32 vector), and
    counts: ``shards``, ``labelled_now`` (shards labelled by this call), ``dead_lettered``.

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
    if current is None or {k: v for k, v in current.items() if k != "shards"} != wanted:
        if fs.exists(root):
            for sub in ("inputs", "labels"):
                if fs.exists(f"{root}/{sub}"):
                    fs.rm(f"{root}/{sub}", recursive=True)
        fs.makedirs(root, exist_ok=True)
        shards = _write_shards(cfg, root, fs)
        write_json_atomically(fs.unstrip_protocol(root), MANIFEST, {**wanted, "shards": shards})
    else:
        shards = int(current["shards"])
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
    return by_id, {"shards": shards, "labelled_now": labelled_now, "dead_lettered": dead}


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
    """The corpus rows the teacher labelled: ``ids``, ``texts``, ``logits`` [n, labels] and
    ``gold`` (the label's index, -1 where there is none); a gold label the teacher does not
    know is an error."""
    columns = [cfg.id_column, cfg.text_column] + ([cfg.label_column] if cfg.label_column else [])
    table = read_columns(cfg.corpus, columns)
    ids, texts, gold, rows = [], [], [], []
    labels = (table.column(cfg.label_column).to_pylist() if cfg.label_column
              else [None] * table.num_rows)
    for row_id, text, label in zip(table.column(cfg.id_column).to_pylist(),
                                   table.column(cfg.text_column).to_pylist(), labels, strict=True):
        vector = logits.get(str(row_id)) if row_id is not None else None
        if vector is None:  # dead-lettered by the teacher's job (its reason is there)
            continue
        if len(vector) != n_labels:
            raise TrainingDataError(
                f"The soft labels have {len(vector)} logits a row but the teacher has {n_labels} "
                f"labels; remove {cfg.soft_labels_dir!r} to label the corpus again.")
        if label is not None and str(label).strip():
            if str(label) not in label_index:
                raise TrainingDataError(
                    f"Gold label {label!r} (row {row_id!r}) is not one of the teacher's labels "
                    f"({', '.join(label_index)}); the student can only learn the teacher's.")
            gold.append(label_index[str(label)])
        else:
            gold.append(-1)
        ids.append(str(row_id))
        texts.append(text)
        rows.append(vector)
    return {"ids": ids, "texts": texts, "gold": np.array(gold, dtype=np.int64),
            "logits": np.stack(rows) if rows else np.zeros((0, n_labels), np.float32)}
