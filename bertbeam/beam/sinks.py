"""``bertbeam embed --sink``: a vector collection kept exactly in sync with the results.

A sink (:class:`MilvusSink`: Milvus Lite or a server; :class:`QdrantSink`: Qdrant local mode
or a server) is plain, picklable config. On the launcher, :meth:`~MilvusSink.check` refuses
an unusable location, a collection whose schema does not fit the results (dimension, text)
and an embedded database that several worker processes would open, each in one line; it
creates the collection when there is none. In the pipeline, :class:`SyncToSink` upserts the
rows this run computed (every row, into an empty collection) and deletes the ids that left
the corpus (:class:`bertbeam.beam.incremental.JoinPrevious` knows them); :class:`FitSink`
sends rows the collection cannot take (an id or text over its field limits) to the dead
letter before anything is written. After the run, :meth:`~MilvusSink.reconcile` reads the
collection back: ids left over from earlier runs are deleted, and a missing or stale point
(its text fingerprint not the result's) fails the run loudly.

Point ids are deterministic, so a run killed mid-write and run again leaves exactly one
point per document: Milvus keys points by the document id itself (a VARCHAR primary key);
Qdrant, which takes UUIDs or integers only, by :func:`point_id` (uuid5 of the document id),
with the document id in the payload.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertbeam.core.deadletter import DEAD_LETTER, DeadLetter, Reason, Stage
from bertbeam.core.fingerprint import STAMP_COLUMNS
from bertbeam.core.records import iter_rows
from bertbeam.tasks.embed import TASK_COLUMNS

_LOG = logging.getLogger("bertbeam")

ID_COLUMN = "id"
TEXT_COLUMN = "text"
SINK_KINDS = ("milvus", "qdrant")
POINT_NAMESPACE = uuid.UUID("6f0a3c1e-5b2d-4e8f-9a71-b3e2d4c5f601")
"""The uuid5 namespace of Qdrant point ids (fixed: changing it orphans every point)."""
TEXT_FP, _, _, RUN_ID = STAMP_COLUMNS
WRITE_BATCH = 500
_FORMS = ("milvus:PATH.db (Milvus Lite), milvus:http://HOST:19530 (a Milvus server), "
          "qdrant:DIR (Qdrant local mode), qdrant:http://HOST:6333 (a Qdrant server)")


class SinkMismatchError(RuntimeError):
    """The collection does not hold exactly this run's results after the write."""


def point_id(doc_id: str) -> str:
    """The Qdrant point id of a document: uuid5 of its id (the same on every run)."""
    return str(uuid.uuid5(POINT_NAMESPACE, doc_id))


def plain(value: Any) -> Any:
    """A metadata value as plain JSON-able Python (numpy and dates included)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def metadata_columns(schema: pa.Schema, text_column: str | None) -> list[str]:
    """The carried columns of a results schema: all but ``id``, the text and the task's own."""
    return [n for n in schema.names if n not in (ID_COLUMN, text_column, *TASK_COLUMNS)]


@dataclass(frozen=True)
class SinkRow:
    """One point: the document id, its vector, its text (when kept) and its metadata (the
    carried columns, the text fingerprint and the run that computed it)."""

    id: str
    vector: list[float]
    text: str | None
    metadata: dict[str, Any]


def sink_rows(batch: pa.RecordBatch | dict, text_column: str | None) -> Iterator[SinkRow]:
    """Results rows (a record batch, or one carried row dict) -> :class:`SinkRow`\\ s."""
    for row in (iter_rows(batch) if isinstance(batch, pa.RecordBatch) else [batch]):
        names = [n for n in row if n not in (ID_COLUMN, text_column, *TASK_COLUMNS)]
        meta = {n: plain(row.get(n)) for n in names}
        meta[TEXT_FP], meta[RUN_ID] = row.get(TEXT_FP), row.get(RUN_ID)
        yield SinkRow(id=str(row[ID_COLUMN]),
                      vector=np.asarray(row["embedding"], dtype=np.float32).tolist(),
                      text=row.get(text_column) if text_column else None, metadata=meta)


# -- where a sink lives ---------------------------------------------------------------------


def _check_local_dir(path: str, what: str) -> None:
    """An embedded database directory: not under a file, creatable, writable, and not held
    by another process (its ``LOCK`` / ``.lock`` file)."""
    full = os.path.abspath(path)
    parent = full
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent != full and not os.path.isdir(parent):
        raise ValueError(f"{what} {path!r} is under {parent!r}, which is a file; choose a "
                         "directory path.")
    if os.path.exists(full) and not os.path.isdir(full):
        raise ValueError(f"{what} {path!r} is a file, not a database directory (an older "
                         "Milvus Lite's single-file database?); choose a new path.")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{what} {path!r} is not writable ({parent!r} is read-only for this "
                         "user).")


def _held_elsewhere(lock_file: str) -> bool:
    """Whether another process holds an advisory ``flock`` on ``lock_file``."""
    if not os.path.exists(lock_file):
        return False
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def check_runner(kind: str, location: str, *, local: bool, processes: int) -> None:
    """An embedded database (a local path) opens in one local process: refused with a remote
    runner or several worker processes. A server URL passes."""
    if location.startswith(("http://", "https://")):
        return
    if not local:
        raise ValueError(f"--sink {kind}:{location} is an embedded database on this machine, "
                         "which remote workers cannot reach; use a server URL.")
    if processes > 1:
        raise ValueError(f"--sink {kind}:{location} is an embedded database that one process "
                         "opens at a time; with --direct_running_mode=multi_processing and "
                         f"{processes} workers, use --direct_running_mode=multi_threading or a "
                         "server URL.")


# -- the two sinks --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MilvusSink:
    """A Milvus collection kept in sync with ``bertbeam embed``'s results.

    Attributes:
        uri: a local ``*.db`` path (Milvus Lite, embedded in the process; one process at a
            time) or a server URL ``http(s)://host:19530``.
        collection: collection name; created on the launcher when it does not exist.
        token: credentials for a server (``user:password`` or an API key), if any.
    """

    uri: str
    collection: str = "bertbeam"
    token: str = ""

    kind: ClassVar[str] = "milvus"
    id_bytes: ClassVar[int | None] = 1024  # the VARCHAR primary key's max_length
    text_bytes: ClassVar[int | None] = 65535  # the content field's max_length

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str) or not self.uri.strip():
            raise ValueError(f"Milvus URI must be a local .db path or http(s):// URL, got {self.uri!r}.")
        if not self.remote and not self.uri.endswith(".db"):
            raise ValueError(f"Milvus URI {self.uri!r} is neither a Milvus Lite path (ending in "
                             ".db) nor a server URL (http://host:19530).")
        _check_collection_name(self.collection, "Milvus")

    @property
    def remote(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    @property
    def location(self) -> str:
        return self.uri

    def client(self) -> Any:
        """A ``pymilvus.MilvusClient`` on this sink (Milvus Lite runs in this process)."""
        try:
            from pymilvus import MilvusClient  # optional: the sink's client, on use
        except ImportError as exc:
            raise ValueError("--sink milvus needs pymilvus (and milvus-lite for a .db path): "
                             "pip install 'bertbeam[milvus]'.") from exc
        logging.getLogger("pymilvus").setLevel(logging.ERROR)  # its iterator's timestamp warning
        return MilvusClient(uri=self.uri, token=self.token)

    def check(self, schema: pa.Schema, *, text_column: str | None, local: bool = True,
              processes: int = 1) -> int:
        """Launcher check: a usable location, a collection that fits ``schema`` (created when
        there is none: ``id`` VARCHAR primary key, ``embedding`` FLOAT_VECTOR(dim) with a
        cosine index, ``content`` VARCHAR when the results keep text, ``metadata`` JSON).
        Returns the points the collection holds.

        Raises:
            ValueError: in one line, for each of those.
        """
        if not self.remote:
            check_runner("milvus", self.uri, local=local, processes=processes)
            _check_local_dir(self.uri, "Milvus Lite path")
            if not _milvus_lite_open_here(self.uri) and _held_elsewhere(os.path.join(self.uri, "LOCK")):
                raise ValueError(f"Milvus Lite path {self.uri!r} is held by another process (a "
                                 "running job or a notebook); stop it or use another path.")
            os.makedirs(os.path.dirname(os.path.abspath(self.uri)), exist_ok=True)
        from pymilvus import DataType, MilvusClient  # optional: the sink's client, on use

        dim = schema.field("embedding").type.list_size
        has_text = bool(text_column) and text_column in schema.names
        try:
            client = self.client()
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"--sink milvus:{self.uri} cannot be opened: {_first_line(exc)}") from exc
        try:
            if client.has_collection(self.collection):
                fields = {f["name"]: f for f in client.describe_collection(self.collection)["fields"]}
                have = (fields.get("embedding") or {}).get("params", {}).get("dim")
                if have is None or int(have) != dim:
                    raise ValueError(
                        f"Milvus collection {self.collection!r} at {self.uri} holds {have}-dimensional "
                        f"embeddings; these results have {dim}. Use another --sink-collection.")
                _check_text_fit(has_text, "content" in fields, self.collection, self.uri)
                return self._count(client)
            fields = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            fields.add_field("id", DataType.VARCHAR, is_primary=True, max_length=self.id_bytes)
            fields.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
            if has_text:
                fields.add_field("content", DataType.VARCHAR, max_length=self.text_bytes)
            fields.add_field("metadata", DataType.JSON)
            client.create_collection(self.collection, schema=fields)
            index = client.prepare_index_params()
            index.add_index("embedding", index_type="AUTOINDEX", metric_type="COSINE")
            # Not waited for: the collection is empty, and the wait asks for a timestamp that
            # Milvus Lite does not serve.
            client.create_index(self.collection, index, sync=False)
            return 0
        finally:
            client.close()

    def prepare(self, schema: pa.Schema, text_column: str | None = TEXT_COLUMN) -> None:
        """Creates the collection for ``schema`` or checks the existing one (see :meth:`check`)."""
        self.check(schema, text_column=text_column)

    def _count(self, client: Any) -> int:
        # A collection is "released" in a process that did not create it (a rerun) until
        # it is loaded; loading a loaded one is a no-op.
        client.load_collection(self.collection)
        rows = client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def upsert(self, client: Any, rows: list[SinkRow]) -> None:
        data = []
        for r in rows:
            point = {"id": r.id, "embedding": r.vector, "metadata": r.metadata}
            if r.text is not None:
                point["content"] = r.text
            data.append(point)
        client.upsert(self.collection, data=data)

    def delete(self, client: Any, ids: list[str]) -> None:
        client.delete(self.collection, ids=ids)

    def stored(self, client: Any) -> tuple[int, dict[str, str | None]]:
        """(the collection's count, document id -> its text fingerprint) read back."""
        out: dict[str, str | None] = {}
        client.load_collection(self.collection)
        iterator = client.query_iterator(self.collection, batch_size=1000, filter="",
                                         output_fields=["metadata"])
        try:
            while batch := iterator.next():
                for row in batch:
                    out[row["id"]] = (row.get("metadata") or {}).get(TEXT_FP)
        finally:
            iterator.close()
        return self._count(client), out

    def close(self, client: Any) -> None:
        client.close()


@dataclass(frozen=True, kw_only=True)
class QdrantSink:
    """A Qdrant collection kept in sync with ``bertbeam embed``'s results.

    Attributes:
        location: a local directory (Qdrant local mode, embedded in the process; one
            process at a time) or a server URL ``http(s)://host:6333``.
        collection: collection name; created on the launcher when it does not exist, with
            one named cosine vector ``dense`` (Beam's ``QdrantWriteConfig`` default).
        api_key: for a server, if any.
    """

    location: str
    collection: str = "bertbeam"
    api_key: str = ""

    kind: ClassVar[str] = "qdrant"
    id_bytes: ClassVar[int | None] = None  # ids are uuid5s; the document id is payload
    text_bytes: ClassVar[int | None] = None
    vector_name: ClassVar[str] = "dense"

    def __post_init__(self) -> None:
        if not isinstance(self.location, str) or not self.location.strip():
            raise ValueError(f"Qdrant location must be a local directory or http(s):// URL, "
                             f"got {self.location!r}.")
        _check_collection_name(self.collection, "Qdrant")

    @property
    def remote(self) -> bool:
        return self.location.startswith(("http://", "https://"))

    def client(self) -> Any:
        """A ``qdrant_client.QdrantClient``; in local mode one per process and path, shared
        (Qdrant's local storage takes one client at a time)."""
        try:
            from qdrant_client import QdrantClient  # optional: the sink's client, on use
        except ImportError as exc:
            raise ValueError("--sink qdrant needs qdrant-client: pip install 'bertbeam[qdrant]'.") from exc
        if self.remote:
            return QdrantClient(url=self.location, api_key=self.api_key or None,
                                check_compatibility=False)
        path = os.path.abspath(self.location)
        with _QDRANT_LOCK:
            if path not in _QDRANT_LOCAL:
                _QDRANT_LOCAL[path] = QdrantClient(path=path)
            return _QDRANT_LOCAL[path]

    def check(self, schema: pa.Schema, *, text_column: str | None, local: bool = True,
              processes: int = 1) -> int:
        """Launcher check, as :meth:`MilvusSink.check`: the text fit is read from a stored
        point (Qdrant payloads have no schema). Returns the points the collection holds."""
        from qdrant_client import models  # optional: the sink's client, on use

        if not self.remote:
            check_runner("qdrant", self.location, local=local, processes=processes)
            _check_local_dir(self.location, "Qdrant path")
            if (os.path.abspath(self.location) not in _QDRANT_LOCAL
                    and _held_elsewhere(os.path.join(self.location, ".lock"))):
                raise ValueError(f"Qdrant path {self.location!r} is held by another process (a "
                                 "running job or a notebook); stop it or use another path.")
        dim = schema.field("embedding").type.list_size
        has_text = bool(text_column) and text_column in schema.names
        try:
            client = self.client()
            exists = client.collection_exists(self.collection)
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"--sink qdrant:{self.location} cannot be opened: {_first_line(exc)}") from exc
        if not exists:
            client.create_collection(self.collection, vectors_config={
                self.vector_name: models.VectorParams(size=dim, distance=models.Distance.COSINE)})
            return 0
        vectors = client.get_collection(self.collection).config.params.vectors
        have = vectors.get(self.vector_name) if isinstance(vectors, dict) else None
        if have is None or have.size != dim:
            raise ValueError(
                f"Qdrant collection {self.collection!r} at {self.location} has "
                f"{f'{have.size}-dimensional' if have else f'no {self.vector_name!r}'} vectors; "
                f"these results have {dim}-dimensional embeddings. Use another --sink-collection.")
        points, _ = client.scroll(self.collection, limit=1, with_payload=True, with_vectors=False)
        if points:
            _check_text_fit(has_text, "content" in (points[0].payload or {}), self.collection,
                            self.location)
        return client.count(self.collection, exact=True).count

    def upsert(self, client: Any, rows: list[SinkRow]) -> None:
        from qdrant_client import models  # optional: the sink's client, on use

        points = []
        for r in rows:
            payload: dict[str, Any] = {"id": r.id, "metadata": r.metadata}
            if r.text is not None:
                payload["content"] = r.text
            points.append(models.PointStruct(id=point_id(r.id), vector={self.vector_name: r.vector},
                                             payload=payload))
        with _QDRANT_LOCK:
            client.upsert(self.collection, points=points)

    def delete(self, client: Any, ids: list[str]) -> None:
        from qdrant_client import models  # optional: the sink's client, on use

        with _QDRANT_LOCK:
            client.delete(self.collection,
                          points_selector=models.PointIdsList(points=[point_id(i) for i in ids]))

    def stored(self, client: Any) -> tuple[int, dict[str, str | None]]:
        out: dict[str, str | None] = {}
        offset = None
        with _QDRANT_LOCK:
            while True:
                points, offset = client.scroll(self.collection, limit=1000, offset=offset,
                                               with_payload=["id", f"metadata.{TEXT_FP}"],
                                               with_vectors=False)
                for p in points:
                    payload = p.payload or {}
                    out[payload.get("id", str(p.id))] = (payload.get("metadata") or {}).get(TEXT_FP)
                if offset is None:
                    break
            return client.count(self.collection, exact=True).count, out

    def close(self, client: Any) -> None:
        if self.remote:
            client.close()  # local clients stay open for the process (see client())


_QDRANT_LOCAL: dict[str, Any] = {}
_QDRANT_LOCK = threading.RLock()


@atexit.register
def _close_qdrant_local() -> None:
    """Closes the shared local clients while Python can still run their close()."""
    with _QDRANT_LOCK:
        for client in _QDRANT_LOCAL.values():
            client.close()
        _QDRANT_LOCAL.clear()

Sink = MilvusSink | QdrantSink


def _milvus_lite_open_here(uri: str) -> bool:
    try:
        # optional: the sink's client, on use
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return False
    return os.path.abspath(uri) in getattr(server_manager_instance, "_servers", {})


def _check_collection_name(name: str, what: str) -> None:
    if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
        raise ValueError(f"{what} collection names are letters, digits and underscores, not "
                         f"starting with a digit; got {name!r}.")


def _check_text_fit(has_text: bool, stored_text: bool, collection: str, where: str) -> None:
    if has_text and not stored_text:
        raise ValueError(f"Collection {collection!r} at {where} was made without text, and this "
                         "run keeps it (--keep-text); drop --keep-text or use another "
                         "--sink-collection.")
    if stored_text and not has_text:
        raise ValueError(f"Collection {collection!r} at {where} holds text, and this run does "
                         "not keep it; pass --keep-text or use another --sink-collection.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def parse_sink(value: str, collection: str = "bertbeam") -> Sink:
    """``--sink`` to a sink: ``milvus:PATH.db``, ``milvus:http://host:19530``,
    ``qdrant:DIR`` or ``qdrant:http://host:6333``.

    Raises:
        ValueError: an unknown kind or a malformed location.
    """
    kind, _, location = value.partition(":")
    if kind not in SINK_KINDS or not location:
        raise ValueError(f"Invalid --sink {value!r}. Valid forms are: {_FORMS}.")
    if kind == "milvus":
        return MilvusSink(uri=location, collection=collection)
    return QdrantSink(location=location, collection=collection)


def add_sink_args(parser: argparse.ArgumentParser | Any) -> None:
    """``--sink`` and ``--sink-collection`` for ``bertbeam embed``."""
    parser.add_argument("--sink", default=None,
                        help="also keep a vector collection in sync with the results (with "
                             "--previous: upserts of computed rows, deletes of ids that left "
                             f"the corpus, read back after the write): {_FORMS}")
    parser.add_argument("--sink-collection", default="bertbeam", help="collection for --sink")


def sink_from_args(args: argparse.Namespace) -> Sink | None:
    return parse_sink(args.sink, args.sink_collection) if args.sink else None


# -- in the pipeline ------------------------------------------------------------------------


def misfit(sink: Sink, doc_id: str, text: str | None) -> str | None:
    """Why ``sink`` cannot take this row (an id or text over its field limits), or ``None``."""
    if sink.id_bytes is not None and len(doc_id.encode("utf-8")) > sink.id_bytes:
        return f"the id is over the {sink.kind} collection's limit of {sink.id_bytes} bytes"
    if (text is not None and sink.text_bytes is not None
            and len(text.encode("utf-8")) > sink.text_bytes):
        return f"the text is over the {sink.kind} collection's limit of {sink.text_bytes} bytes"
    return None


class _FitSinkFn(beam.DoFn):
    def __init__(self, sink: Sink, text_column: str | None):
        self._sink, self._text = sink, text_column

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        sink = self._sink
        if sink.id_bytes is None and sink.text_bytes is None:
            yield batch
            return
        ids = batch.column(batch.schema.get_field_index(ID_COLUMN))
        too_long = pc.greater(pc.binary_length(ids), sink.id_bytes or 2**62)
        if self._text and self._text in batch.schema.names and sink.text_bytes is not None:
            texts = batch.column(batch.schema.get_field_index(self._text))
            too_long = pc.or_(too_long, pc.fill_null(
                pc.greater(pc.binary_length(texts), sink.text_bytes), False))
        if not pc.any(too_long).as_py():
            yield batch
            return
        bad = batch.filter(too_long)
        bad_texts = (bad.column(bad.schema.get_field_index(self._text)).to_pylist()
                     if self._text and self._text in bad.schema.names else [None] * bad.num_rows)
        for doc_id, text in zip(bad.column(bad.schema.get_field_index(ID_COLUMN)).to_pylist(),
                                bad_texts, strict=True):
            why = misfit(sink, doc_id, text)
            yield DeadLetter.of(doc_id, Reason.SINK_LIMIT, why, value=text if text else doc_id,
                                stage=Stage.SINK).tagged()
        good = batch.filter(pc.invert(too_long))
        if good.num_rows:
            yield good


class FitSink(beam.PTransform):
    """Results record batches -> ``{"results": the rows ``sink`` can take, "dead_letter":
    DeadLetter for the others}`` (reason ``sink_limit``): run before the results are
    written, so a row is in the results and the collection, or in the dead letter."""

    def __init__(self, sink: Sink, text_column: str | None):
        super().__init__()
        self._sink, self._text = sink, text_column

    def expand(self, batches: beam.PCollection) -> dict[str, beam.PCollection]:
        out = batches | "FitSink" >> beam.ParDo(_FitSinkFn(self._sink, self._text)).with_outputs(
            DEAD_LETTER, main="results")
        return {"results": out.results, DEAD_LETTER: out[DEAD_LETTER]}


class SyncFn(beam.DoFn):
    """Upserts results rows and deletes ids, ``WRITE_BATCH`` at a time."""

    def __init__(self, sink: Sink, text_column: str | None):
        self._sink, self._text = sink, text_column
        self._client: Any = None

    def setup(self) -> None:
        self._client = self._sink.client()

    def start_bundle(self) -> None:
        self._rows: list[SinkRow] = []
        self._gone: list[str] = []

    def process(self, element: Any) -> None:
        if isinstance(element, str):
            self._gone.append(element)
            if len(self._gone) >= WRITE_BATCH:
                self._flush()
            return
        for row in sink_rows(element, self._text):
            self._rows.append(row)
            if len(self._rows) >= WRITE_BATCH:
                self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._sink.upsert(self._client, self._rows)
            self._rows = []
        if self._gone:
            self._sink.delete(self._client, self._gone)
            self._gone = []

    def finish_bundle(self) -> None:
        self._flush()

    def teardown(self) -> None:
        if self._client is not None:
            self._sink.close(self._client)
            self._client = None


class SyncToSink(beam.PTransform):
    """(results to upsert: record batches or row dicts, ids to delete: str) -> nothing.

    Example::

        (computed_rows, removed_ids) | SyncToSink(QdrantSink(location="vectors"), "text")
    """

    def __init__(self, sink: Sink, text_column: str | None):
        super().__init__()
        self._sink, self._text = sink, text_column

    def expand(self, inputs: tuple[beam.PCollection, ...]) -> beam.PCollection:
        return (inputs
                | "SinkWork" >> beam.Flatten()
                | "SpreadSinkWork" >> beam.Reshuffle()
                | "Sync" >> beam.ParDo(SyncFn(self._sink, self._text)))


# -- after the pipeline ---------------------------------------------------------------------


def reconcile(sink: Sink, expected: dict[str, str | None]) -> dict[str, Any]:
    """Reads the collection back and compares it with ``expected`` (document id -> text
    fingerprint of the results): points of ids not in the results (left over from earlier
    runs, or rows dead-lettered this time) are deleted; then the count and every id's
    fingerprint must match.

    Returns:
        ``{"points", "leftovers_deleted", "verified"}``.

    Raises:
        SinkMismatchError: points missing, stale or counted differently, in one line.
    """
    client = sink.client()
    try:
        count, stored = sink.stored(client)
        leftovers = [i for i in stored if i not in expected]
        for start in range(0, len(leftovers), WRITE_BATCH):
            sink.delete(client, leftovers[start:start + WRITE_BATCH])
        if leftovers:
            count, stored = sink.stored(client)
            _LOG.warning("Deleted %d points of ids not in these results from %s collection %r "
                         "(left over from earlier runs).", len(leftovers), sink.kind, sink.collection)
        missing = [i for i in expected if i not in stored]
        stale = [i for i, fp in expected.items() if i in stored and stored[i] != fp]
    finally:
        sink.close(client)
    if missing or stale or count != len(expected):
        example = (missing or stale or [""])[0]
        raise SinkMismatchError(
            f"--sink {sink.kind} collection {sink.collection!r} holds {count} points for "
            f"{len(expected)} result rows after the write: {len(missing)} missing, {len(stale)} "
            f"stale (another text's vector){f', e.g. {example!r}' if example else ''}; rerun "
            "the job to write them again.")
    return {"points": count, "leftovers_deleted": len(leftovers), "verified": True}
