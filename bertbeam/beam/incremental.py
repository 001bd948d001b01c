"""Incremental runs: result rows carry what they were computed from, and a rerun carries rows
of earlier runs forward instead of sending unchanged documents through the model.

Every row a job writes gets four columns (:data:`STAMP_FIELDS`): the document's text
fingerprint, the model and job fingerprints (:mod:`bertbeam.core.fingerprint`) and the id of the
run that computed it. With ``--previous LOCATION`` (any number of them), the corpus is joined
by id with the rows of those earlier runs (:class:`JoinPrevious`, a ``CoGroupByKey``: every
id meets its earlier rows on one worker, and no worker holds all ids). A document whose text
and job fingerprints equal those of an earlier row is not computed again: the row is written
as it is, ``run_id`` included, so each output directory is complete on its own and
``run_id`` tells computed rows from carried ones. Documents gone from the input are gone from
the output; new and changed ones go through the model.

Without ``--previous`` the text fingerprint rides on the document key through the model
(:class:`KeyByText` -> ``InferDocuments`` -> :class:`StampResults`), so the inference path
keeps its single fused stage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertbeam.beam.reading import InputError
from bertbeam.beam.writing import read_table
from bertbeam.core import metrics
from bertbeam.core.deadletter import DEAD_LETTER, DeadLetter
from bertbeam.core.fingerprint import (
    STAMP_COLUMNS,
    TEXT_FINGERPRINT_CHARS,
    text_fingerprint,
    text_fingerprints,
)
from bertbeam.core.records import Document, DocumentChunk, table_rows
from bertbeam.filesystems import expand_glob, url_to_fs

_LOG = logging.getLogger("bertbeam")

TEXT_FP, MODEL_FP, JOB_FP, RUN_ID = STAMP_COLUMNS
STAMP_FIELDS = [pa.field(name, pa.string(), nullable=False) for name in STAMP_COLUMNS]
"""The columns every job result row ends with."""

CARRIED = "carried"
REMOVED = "removed"
_KEY_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class Stamp:
    """What a run stamps on the rows it computes: its job and model fingerprints, its id."""

    job_fingerprint: str
    model_fingerprint: str
    run_id: str

    def schema(self, task_schema: pa.Schema) -> pa.Schema:
        """The task's result schema with :data:`STAMP_FIELDS` appended."""
        return pa.schema([*task_schema, *STAMP_FIELDS])


# -- the text fingerprint through the model ------------------------------------------------


def _key(doc_id: str, text: str, text_pair: str | None, extra: dict[str, Any] | None) -> str:
    return f"{doc_id}{_KEY_SEPARATOR}{text_fingerprint(text, text_pair, extra)}"


def _keyed(doc: Document) -> Document:
    return Document(id=_key(doc.id, doc.text, doc.text_pair, doc.extra), text=doc.text,
                    text_pair=doc.text_pair, extra=doc.extra)


def _unkey(key: str) -> tuple[str, str]:
    """(id, text fingerprint) of a key made by :func:`_keyed` (the fingerprint has a fixed
    length, so any id, separator characters included, comes back intact)."""
    cut = len(key) - TEXT_FINGERPRINT_CHARS
    return key[: cut - len(_KEY_SEPARATOR)], key[cut:]


def _keyed_chunk(chunk: DocumentChunk) -> DocumentChunk:
    if chunk.text_pairs is None and not chunk.extra:  # texts alone: one loop, no call per text
        keys = [f"{doc_id}{_KEY_SEPARATOR}{fingerprint}" for doc_id, fingerprint
                in zip(chunk.ids, text_fingerprints(chunk.texts), strict=True)]
        return DocumentChunk(keys, chunk.texts, chunk.text_pairs, chunk.extra)
    pairs = chunk.text_pairs or [None] * len(chunk)
    extra = chunk.extra or {}
    keys = [_key(doc_id, text, pair, {c: v[i] for c, v in extra.items()} or None)
            for i, (doc_id, text, pair) in enumerate(zip(chunk.ids, chunk.texts, pairs, strict=True))]
    return DocumentChunk(keys, chunk.texts, chunk.text_pairs, chunk.extra)


def _key_element(element: Document | DocumentChunk) -> Document | DocumentChunk:
    return _keyed_chunk(element) if isinstance(element, DocumentChunk) else _keyed(element)


class KeyByText(beam.PTransform):
    """Document (or DocumentChunk) -> the same whose ids also carry their text fingerprint,
    for :class:`StampResults` to take back after the model (an element-wise step: no
    shuffle)."""

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        return docs | "KeyByText" >> beam.Map(_key_element)


def stamp_batch(batch: pa.RecordBatch, stamp: Stamp) -> pa.RecordBatch:
    """A record batch of results of :class:`KeyByText` documents with the plain ids back and
    the stamp columns appended (column operations: no row is visited in Python)."""
    keys = batch.column(batch.schema.get_field_index("id"))
    fp_chars = TEXT_FINGERPRINT_CHARS
    ids = pc.utf8_slice_codeunits(keys, 0, -(fp_chars + len(_KEY_SEPARATOR)))
    fingerprints = pc.utf8_slice_codeunits(keys, -fp_chars)
    n = batch.num_rows
    columns = [ids if name == "id" else column
               for name, column in zip(batch.schema.names, batch.columns, strict=True)]
    constant = [pa.repeat(pa.scalar(value, pa.string()), n) for value in
                (stamp.model_fingerprint, stamp.job_fingerprint, stamp.run_id)]
    return pa.RecordBatch.from_arrays([*columns, fingerprints, *constant],
                                      schema=stamp.schema(batch.schema))


def _unkey_dead_letter(dead: DeadLetter) -> DeadLetter:
    return dead._replace(id=_unkey(dead.id)[0])


class StampResults(beam.PTransform):
    """``InferChunks`` output of :class:`KeyByText` documents -> ``{"results": record batch
    with the stamp columns, "dead_letter": DeadLetter}`` with the plain ids back."""

    def __init__(self, stamp: Stamp):
        super().__init__()
        self._stamp = stamp

    def expand(self, inferred: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        return {
            "results": inferred["results"] | "StampRows" >> beam.Map(
                stamp_batch, self._stamp).with_output_types(pa.RecordBatch),
            DEAD_LETTER: inferred[DEAD_LETTER] | "UnkeyDeadLetters" >> beam.Map(
                _unkey_dead_letter).with_output_types(DeadLetter),
        }


# -- previous runs ------------------------------------------------------------------------


def previous_result_files(locations: Iterable[str], stamp: Stamp, schema: pa.Schema
                          ) -> list[tuple[int, str]]:
    """Launcher check of ``--previous`` locations: ``(location index, results file URL)`` of
    those whose rows may be carried forward.

    A location without result files is an error (a mistyped location must not silently
    recompute everything). A location of another job (its rows' job fingerprints, from the
    Parquet footers' statistics, all differ from this job's) or with another schema
    carries nothing, which one log line says.
    """
    usable = []
    for index, location in enumerate(locations):
        files = expand_glob(f"{location.rstrip('/')}/results-*-of-*.parquet")
        if not files:
            raise InputError(f"--previous {location!r} holds no results-*-of-*.parquet files; "
                             "expected the output directory of an earlier run of this job.")
        theirs = _job_fingerprints(files)
        first = _schema(files[0])
        if not first.equals(schema):
            _LOG.warning("Nothing carried forward from %s: its results have another schema "
                         "(another task, model or bertbeam version).", location)
        elif theirs is not None and stamp.job_fingerprint not in theirs:
            _LOG.warning("Nothing carried forward from %s: it was made with job fingerprint %s, "
                         "this job's is %s (model or options changed).", location,
                         ", ".join(sorted(theirs)), stamp.job_fingerprint)
        else:
            usable += [(index, url) for url in files]
    return usable


def _schema(url: str) -> pa.Schema:
    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).schema_arrow


def _job_fingerprints(files: list[str]) -> set[str] | None:
    """The job fingerprints of the files' rows when every row group's statistics pin one
    (min == max), else ``None`` (unknown: the rows are filtered one by one)."""
    found: set[str] = set()
    for url in files:
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        if JOB_FP not in meta.schema.names:
            return None
        column = meta.schema.names.index(JOB_FP)
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(column).statistics
            if stats is None or not stats.has_min_max or stats.min != stats.max:
                return None
            found.add(stats.min)
    return found


class _ListGroupsFn(beam.DoFn):
    def process(self, element: tuple[int, str]) -> Iterator[tuple[int, str, int]]:
        index, url = element
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            groups = pq.ParquetFile(f).num_row_groups
        for group in range(groups):
            yield index, url, group


class _ReadPreviousFn(beam.DoFn):
    """(location index, url, row group) -> (id, (location index, row)) for the rows of this
    job's fingerprint, ``(location index, row, names)`` for a row whose columns ``names``
    hold NaN or infinite values; other rows are never turned into Python objects."""

    def __init__(self, job_fp: str):
        self._job_fp = job_fp

    def process(self, element: tuple[int, str, int]) -> Iterator[tuple[str, tuple[int, dict]]]:
        index, url, group = element
        fs, path = url_to_fs(url)
        # A carried row is checked like an input (issue 27): a data page whose checksum fails
        # or that cannot be decoded carries nothing, nor does a row with a non-finite value;
        # their documents are computed again.
        try:
            with fs.open(path, "rb") as f:
                table = pq.ParquetFile(f, page_checksum_verification=True).read_row_group(group)
        except (OSError, pa.ArrowException) as exc:
            _LOG.warning("Row group %d of %s cannot be read (%s): its documents are computed "
                         "again, not carried forward.", group, url, str(exc).splitlines()[0])
            return
        table = table.filter(pc.equal(table.column(JOB_FP), self._job_fp))
        # Which columns of each row are not finite: a result column makes the row unusable, a
        # carried input column may hold NaN as the input does (_ChooseFn tells them apart).
        finite = {name: _finite(column.combine_chunks())
                  for name, column in zip(table.column_names, table.columns, strict=True)}
        bad = [name for name, ok in finite.items() if not ok.all()]
        for i, row in enumerate(table_rows(table)):
            names = tuple(name for name in bad if not finite[name][i])
            yield row["id"], ((index, row, names) if names else (index, row))


def _finite(array: pa.Array) -> np.ndarray:
    kind = array.type
    if pa.types.is_floating(kind):
        values = array.to_numpy(zero_copy_only=False)
        return np.isfinite(values) | np.asarray(array.is_null(), dtype=bool)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        child_ok = _finite(array.flatten())
        ok = np.ones(len(array), dtype=bool)
        if not child_ok.all():
            parents = np.asarray(pc.list_parent_indices(array))
            ok[parents[~child_ok]] = False
        return ok
    if pa.types.is_struct(kind):
        ok = np.ones(len(array), dtype=bool)
        for i in range(kind.num_fields):
            ok &= _finite(array.field(i))
        return ok
    return np.ones(len(array), dtype=bool)


class _ChooseFn(beam.DoFn):
    """One id's document and earlier rows -> its earlier row (tagged ``carried``) when the
    text is unchanged, else the document (to compute); the id (tagged ``removed``) when it
    left the corpus."""

    _warned = False

    def process(self, element: tuple[str, dict[str, list]]) -> Iterator[Any]:
        doc_id, joined = element
        docs, previous = joined["documents"], joined["previous"]
        if not docs:
            yield beam.pvalue.TaggedOutput(REMOVED, doc_id)
            return
        doc = docs[0]
        fp = text_fingerprint(doc.text, doc.text_pair, doc.extra)
        same = [p for p in previous if p[1][TEXT_FP] == fp]
        # A NaN or inf in a result column (a damaged earlier file) is never carried forward;
        # in a carried input column it is the input's own value (the text fingerprint covers it).
        inputs = doc.extra or {}
        matches = sorted((p for p in same if all(name in inputs for name in _non_finite(p))),
                         key=lambda p: p[0])
        if len(matches) < len(same) and not self._warned:
            self._warned = True
            _LOG.warning("Earlier rows with NaN or infinite results (a damaged --previous file?) "
                         "are not carried forward: their documents are computed again (first: %r).",
                         doc.id)
        if matches:
            metrics.inc(metrics.CARRIED_FORWARD)
            yield beam.pvalue.TaggedOutput(CARRIED, matches[0][1])
        else:
            yield doc


def _non_finite(previous: tuple) -> tuple[str, ...]:
    """The columns with NaN or infinite values of an earlier row from :class:`_ReadPreviousFn`."""
    return previous[2] if len(previous) > 2 else ()


class JoinPrevious(beam.PTransform):
    """Document -> ``{"documents": Document to compute, "carried": earlier row dict,
    "removed": id of an earlier row whose document left the corpus}``.

    Joins the corpus by id with the rows of earlier runs' results files (``files``, from
    :func:`previous_result_files`) that have this job's fingerprint: an unchanged document's
    earlier row is carried (from the first location that has it), a new or changed document
    goes on to the model. A keyed join (``CoGroupByKey``), so it scales with the workers.

    Example::

        joined = docs | JoinPrevious(previous_result_files(["gs://b/out/day-1"], stamp, schema),
                                     stamp.job_fingerprint)
        to_compute, carried = joined["documents"], joined["carried"]
    """

    def __init__(self, files: list[tuple[int, str]], job_fingerprint: str):
        super().__init__()
        self._files = files
        self._job_fp = job_fingerprint

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        previous = (
            docs.pipeline
            | "PreviousFiles" >> beam.Create(self._files)
            | "ListPreviousRowGroups" >> beam.ParDo(_ListGroupsFn())
            | "SpreadPreviousRowGroups" >> beam.Reshuffle()
            | "ReadPrevious" >> beam.ParDo(_ReadPreviousFn(self._job_fp))
        )
        keyed = docs | "KeyById" >> beam.Map(lambda d: (d.id, d))
        out = (
            {"documents": keyed, "previous": previous}
            | "JoinById" >> beam.CoGroupByKey()
            | "Choose" >> beam.ParDo(_ChooseFn()).with_outputs(CARRIED, REMOVED, main="documents")
        )
        return {"documents": out.documents, CARRIED: out[CARRIED], REMOVED: out[REMOVED]}


def changes(previous_files: Iterable[str], output_dir: str) -> dict[str, Any]:
    """What changed since the earlier run(s): ids ``added`` (no earlier row), ``changed``
    (another text fingerprint), ``unchanged`` and ``removed`` (earlier rows whose id is
    neither in this run's results nor in its dead letter), from the files alone."""
    before: dict[str, str] = {}
    for url in previous_files:
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["id", TEXT_FP])
        for doc_id, fp in zip(table.column("id").to_pylist(), table.column(TEXT_FP).to_pylist(),
                              strict=True):
            before.setdefault(doc_id, fp)
    now = read_table(output_dir, "results", ["id", TEXT_FP])
    out: dict[str, list[str]] = {"added": [], "changed": [], "unchanged": []}
    current = set()
    if now.num_rows:
        for doc_id, fp in zip(now.column("id").to_pylist(), now.column(TEXT_FP).to_pylist(),
                              strict=True):
            current.add(doc_id)
            key = "added" if doc_id not in before else "unchanged" if before[doc_id] == fp else "changed"
            out[key].append(doc_id)
    dead = read_table(output_dir, "dead_letter", ["id"])
    if dead.num_rows:
        current.update(d for d in dead.column("id").to_pylist() if d is not None)
    out["removed"] = [i for i in before if i not in current]
    return {kind: sorted(ids) for kind, ids in out.items()}


def count_computed(output_dir: str, run_id: str) -> int:
    """Rows of ``output_dir``'s results that run ``run_id`` computed (the others were carried
    forward), counted from the ``run_id`` column."""
    table = read_table(output_dir, "results", [RUN_ID])
    if table.num_rows == 0:
        return 0
    return int(pc.sum(pc.equal(table.column(RUN_ID), run_id)).as_py() or 0)
