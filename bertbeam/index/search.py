"""An embedded approximate-nearest-neighbour index over ``bertbeam embed`` results.

An index is a directory (local, ``gs://`` or any fsspec URL)::

    IDX/vectors.faiss    FAISS HNSW graph over the vectors (cosine: inner product of
                         L2-normalized vectors); vector i is the i-th row read
    IDX/rows.parquet     id and carried columns, row i for vector i
    IDX/manifest.json    model URI and fingerprint, dimension, metric, prompts, sizes;
                         written last, so a directory without it is not an index

It is built by streaming the results Parquet record batch by record batch: what a build
holds is the index itself plus one batch (``IndexSpec.batch_rows`` rows). A search reads
only the row groups of ``rows.parquet`` that hold its hits.
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertbeam.beam.validation import check_document
from bertbeam.config import ModelSpec, RunSpec, check_positive
from bertbeam.core.deadletter import DeadLetter
from bertbeam.core.engine import Engine, engine_spec
from bertbeam.core.fingerprint import fingerprint_matches, model_fingerprint
from bertbeam.core.models import ModelLoadError, check_task_fit, resolve_model_dir
from bertbeam.core.records import DocumentChunk
from bertbeam.filesystems import expand_glob, replacing, url_to_fs
from bertbeam.tasks.embed import TASK_COLUMNS, EmbedTask

_LOG = logging.getLogger(__name__)

FORMAT = "bertbeam-index"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
VECTORS_FILE = "vectors.faiss"
ROWS_FILE = "rows.parquet"
"""Columns of the embed results that describe the embedding run, not the document (the embed
task's own and the run's stamp); the index keeps ``id`` and every other (carried) column."""
_ROWS_PER_GROUP = 1024
_CACHED_GROUPS = 64
_BUILD_ID_KEY = b"bertbeam.index.build_id"
_EDGE_BYTES = 1 << 20


class SearchIndexError(ValueError):
    """The embeddings, the index or the query cannot be used as asked (a user error)."""


def _require_faiss() -> Any:
    try:
        import faiss  # the index library, on use
    except ImportError as exc:
        raise SearchIndexError(
            "bertbeam's search index needs FAISS: pip install 'bertbeam[index]'.") from exc
    return faiss


@dataclass(frozen=True, kw_only=True)
class IndexSpec:
    """How the HNSW graph is built and searched.

    Attributes:
        m: neighbours per node (HNSW ``M``); more is better recall and more memory.
        ef_construction: candidate list length while building.
        ef_search: candidate list length while searching (the recall / latency knob).
        batch_rows: rows read from the Parquet files at a time while building.
        threads: threads FAISS uses to build; ``None`` uses all cores.
    """

    m: int = 16
    ef_construction: int = 128
    ef_search: int = 64
    batch_rows: int = 8192
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("m", "ef_construction", "ef_search", "batch_rows"):
            check_positive(name, getattr(self, name))
        check_positive("threads", self.threads, allow_none=True)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What an index was built from and how; ``manifest.json`` holds it as JSON.

    Attributes:
        model: URI of the model that embedded the documents (the results' ``model`` column).
        model_fingerprint: :func:`model_fingerprint` of that model's files at build time.
        dimension: vector dimension.
        count: vectors in the index.
        columns: carried columns kept beside ``id`` in ``rows.parquet``.
        query_prompt: text put before a query (the model's ``query`` prompt), or ``None``.
        document_prompt: the prompt the documents were embedded with, when the run recorded it.
        metric: always ``cosine``.
        library: ``faiss`` and its version; ``hnsw``: the graph's parameters.
        build_id: the build's id, also in ``rows.parquet``'s metadata; ``vectors_bytes`` and
            ``vectors_digest``: the size and edge digest of ``vectors.faiss``. Together they
            tell files of another build (or a truncated file) at open.
        skipped_non_finite: vectors left out because they hold NaN or infinite values.
    """

    model: str
    model_fingerprint: str
    dimension: int
    count: int
    columns: tuple[str, ...] = ()
    query_prompt: str | None = None
    document_prompt: str | None = None
    metric: str = "cosine"
    embeddings: str = ""
    library: str = "faiss"
    library_version: str = ""
    hnsw: dict[str, int] = field(default_factory=dict)
    built_at: str = ""
    build_id: str = ""
    vectors_bytes: int = 0
    vectors_digest: str = ""
    skipped_non_finite: int = 0
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, location: str) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SearchIndexError(f"{location}/{MANIFEST_FILE} is not JSON: {exc}.") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SearchIndexError(f"{location} is not a bertbeam index ({MANIFEST_FILE} has no "
                                   f"'format': {FORMAT!r}).")
        if data.get("format_version") != FORMAT_VERSION:
            raise SearchIndexError(
                f"{location} is a bertbeam index of format version {data.get('format_version')!r}; "
                f"this bertbeam reads version {FORMAT_VERSION}. Rebuild it with `bertbeam index build`.")
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in data.items() if k in known}
        data["columns"] = tuple(data.get("columns", ()))
        return cls(**data)


@dataclass(frozen=True)
class Hit:
    """One search result: the document id, its cosine similarity to the query, and its
    carried columns."""

    id: str
    score: float
    columns: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """``{"id", "score", carried columns...}``; a carried column named like one of the
        hit's own keys (``id``, ``score``) is put under ``carried_<name>`` instead, so it never
        overwrites them."""
        out: dict[str, Any] = {"id": self.id, "score": self.score}
        clashing = {name for name in self.columns if name in out}
        out.update((name, value) for name, value in self.columns.items() if name not in clashing)
        for name in sorted(clashing):
            key = f"carried_{name}"
            while key in out or key in self.columns:
                key = f"carried_{key}"
            out[key] = self.columns[name]
        return out


def hits_json(query: str, hits: Sequence[Hit]) -> str:
    """One query's hits as a line of strict JSON (``search --json``): NaN and infinite values
    become ``null`` (JSON has no NaN), values JSON cannot hold become their text."""
    return json.dumps({"query": query, "hits": [_json_safe(h.as_dict()) for h in hits]},
                      ensure_ascii=False, default=str, allow_nan=False)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_safe(v) for v in value]
    return value


def query_prompt(local_dir: str) -> str | None:
    """The checkpoint's prompt for queries (``prompts["query"]`` in
    ``config_sentence_transformers.json``), or ``None``."""
    path = Path(local_dir) / "config_sentence_transformers.json"
    if not path.exists():
        return None
    prompts = json.loads(path.read_text()).get("prompts") or {}
    return prompts.get("query") or None


def _check_results_schema(url: str, schema: pa.Schema, first: pa.Schema | None) -> int:
    """The embedding dimension of a results file; refuses files that are not embed results
    or do not match the first file."""
    names = schema.names
    if "id" not in names or "embedding" not in names:
        raise SearchIndexError(f"{url} is not a `bertbeam embed` result: it needs columns 'id' and "
                               f"'embedding', its columns are: {', '.join(names)}.")
    kind = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(kind) or not pa.types.is_floating(kind.value_type):
        raise SearchIndexError(f"{url}: column 'embedding' must be fixed_size_list<float>[dim] "
                               f"(as `bertbeam embed` writes it), got {kind}.")
    if first is not None:
        before = first.field("embedding").type.list_size
        if kind.list_size != before:
            raise SearchIndexError(f"{url} has {kind.list_size}-dimensional embeddings but the files "
                                   f"before it have {before}: mismatched dimensions in one index.")
        if [n for n in names if n not in TASK_COLUMNS] != [n for n in first.names if n not in TASK_COLUMNS]:
            raise SearchIndexError(f"{url} carries columns {names} but the files before it carry "
                                   f"{first.names}: one index takes results of one run.")
    return kind.list_size


def _document_prompt(files: Sequence[str]) -> str | None:
    """The prompt the run embedded documents with, when its ``_SUMMARY.json`` records one."""
    fs, path = url_to_fs(files[0])
    summary_path = f"{path.rsplit('/', 1)[0]}/_SUMMARY.json"
    if not fs.exists(summary_path):
        return None
    options = json.loads(fs.cat(summary_path)).get("options") or {}
    return options.get("prompt") or options.get("prompt_name") or None


def _batches(files: Sequence[str], columns: list[str], rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    for number, url in enumerate(files):
        fs, path = url_to_fs(url)
        try:
            with fs.open(path, "rb") as f:
                for batch in pq.ParquetFile(f, page_checksum_verification=True).iter_batches(
                        batch_size=rows, columns=columns):
                    yield number, batch
        except (OSError, pa.ArrowException) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise SearchIndexError(f"{url} cannot be read (a damaged or partly written file?): "
                                   f"{str(exc).splitlines()[0]}") from exc


def _vectors(batch: pa.RecordBatch, dim: int, url: str) -> np.ndarray:
    column = batch.column("embedding")
    if column.null_count:
        raise SearchIndexError(f"{url} has null embeddings; an index needs one vector per row.")
    # A writable float32 copy: FAISS normalizes it in place.
    vectors = np.array(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return vectors.reshape(len(batch), dim)


def _id_hashes(ids: pa.Array) -> np.ndarray:
    return np.fromiter((hash(i) for i in ids.to_pylist()), dtype=np.int64, count=len(ids))


def _refuse_duplicates(hashes: np.ndarray, rows_path: Path, files: Sequence[str],
                       file_starts: list[int]) -> None:
    """Refuses the build when an id is indexed twice (its hits would come back twice), naming
    the id and the files that hold it."""
    order = np.argsort(hashes, kind="stable")
    same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
    if not len(same):
        return
    ids = pq.read_table(rows_path, columns=["id"]).column("id")
    pairs = sorted((int(order[k + 1]), int(order[k])) for k in same)  # the first repeat read
    for second, first in pairs:  # a hash collision of two different ids is not a duplicate
        if ids[first].as_py() == ids[second].as_py():
            where = sorted({files[bisect.bisect_right(file_starts, r) - 1] for r in (first, second)})
            raise SearchIndexError(
                f"The id {ids[first].as_py()!r} is in the embeddings more than once ({' and '.join(where)}); "
                "an index holds each document once: index one run's results (an incremental run's "
                "output already holds every document of its day).")


def _model_pairs(batch: pa.RecordBatch, model_columns: list[str]) -> list[tuple[Any, ...]]:
    """The distinct (model URI[, model fingerprint]) pairs of a batch."""
    table = pa.Table.from_batches([batch.select(model_columns)])
    unique = table.group_by(model_columns).aggregate([])
    return list(zip(*(unique.column(c).to_pylist() for c in model_columns), strict=True))


def _the_model(pairs: dict[tuple[Any, ...], None], source: str) -> tuple[str, str, str]:
    """(URI, local directory, fingerprint) of the one model that made the embeddings.

    The rows' recorded model fingerprints decide, not their URIs: the same checkpoint under
    a new path (a nightly run's carried and computed rows) is one model. Rows without a
    recorded fingerprint are fingerprinted by the model their URI names now."""
    uris = list(dict.fromkeys(pair[0] for pair in pairs))
    if not uris or None in uris:
        raise SearchIndexError(f"{source} has no 'model' column values: the index needs the "
                               "model that made the embeddings, to embed queries the same way.")
    recorded = {pair[1] for pair in pairs if len(pair) > 1}
    if len(recorded) > 1 or None in recorded:
        raise SearchIndexError(
            f"The embeddings come from more than one model (fingerprints "
            f"{', '.join(sorted(map(str, recorded)))} of {', '.join(map(str, uris))}); an index "
            "holds vectors of one model.")
    found: dict[str, tuple[str, str]] = {}
    errors = []
    for uri in reversed(uris):  # the last file's model first: a nightly run's newest rows
        try:
            local_dir = resolve_model_dir(uri)
        except ModelLoadError as exc:
            errors.append(f"{uri!r}: {exc}")
            continue
        if recorded:
            if fingerprint_matches(local_dir, next(iter(recorded))):
                return uri, local_dir, model_fingerprint(local_dir)
            errors.append(f"{uri!r} has changed since the embeddings were made (fingerprint "
                          f"{model_fingerprint(local_dir)}, the rows record {next(iter(recorded))})")
            continue
        found[uri] = (local_dir, model_fingerprint(local_dir))
    fingerprints = {fp for _, fp in found.values()}
    if len(fingerprints) > 1:
        raise SearchIndexError(
            f"The embeddings come from more than one model ({', '.join(sorted(found))} have "
            f"fingerprints {', '.join(sorted(fingerprints))}); an index holds vectors of one model.")
    if found and not errors:
        uri = next(iter(found))
        return uri, *found[uri]
    raise SearchIndexError(f"The embeddings were made by {' or '.join(map(repr, uris))}, which cannot "
                           f"be used here to embed queries: {'; '.join(errors)}")


def build_index(embeddings: str, output: str, *, spec: IndexSpec | None = None) -> Manifest:
    """Builds an index from ``bertbeam embed`` results, streaming them batch by batch.

    Vectors with a NaN or infinite value are left out (they could never be found), counted in
    the manifest's ``skipped_non_finite`` and in a warning.

    Args:
        embeddings: glob of results Parquet files (local, ``gs://``, any fsspec URL).
        output: index directory to write (local, ``gs://``, any fsspec URL); an index
            already there is replaced whole (locally by renaming a new directory into place).
        spec: HNSW parameters and the read batch size.

    Returns:
        The manifest written to ``output``.

    Raises:
        SearchIndexError: no files match, a file is not embed results or is damaged, the files
            mix dimensions, carried columns or models, an id is there twice, ``output`` holds
            other files, or the model cannot be found.

    Example::

        manifest = build_index("out/results-*.parquet", "idx/")
        hits = SearchIndex.open("idx/").search(["how do I open a file?"], k=5)[0]
    """
    faiss = _require_faiss()
    spec = spec or IndexSpec()
    files = expand_glob(embeddings)
    if not files:
        raise SearchIndexError(f"--embeddings {embeddings!r} matches no files.")
    first_schema = None
    for url in files:
        fs, path = url_to_fs(url)
        try:
            with fs.open(path, "rb") as f:
                schema = pq.ParquetFile(f).schema_arrow
        except (OSError, pa.ArrowException) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise SearchIndexError(f"{url} is not a readable Parquet file: "
                                   f"{str(exc).splitlines()[0]}") from exc
        dim = _check_results_schema(url, schema, first_schema)
        first_schema = first_schema or schema
    carried = [n for n in first_schema.names if n not in TASK_COLUMNS and n != "id"]
    model_columns = [c for c in ("model", "model_fingerprint") if c in first_schema.names]
    columns = ["id", "embedding", *carried, *model_columns]

    index = faiss.IndexHNSWFlat(dim, spec.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = spec.ef_construction
    threads_before = faiss.omp_get_max_threads()
    staging = _Staging(output)
    if spec.threads:
        faiss.omp_set_num_threads(spec.threads)
    build_id = uuid.uuid4().hex
    pairs: dict[tuple[Any, ...], None] = {}
    hashes: list[np.ndarray] = []
    file_starts = [0] * len(files)
    skipped = 0
    try:
        workdir = staging.directory
        rows_schema = pa.schema([first_schema.field(n) for n in ["id", *carried]],
                                metadata={_BUILD_ID_KEY: build_id})
        with pq.ParquetWriter(workdir / ROWS_FILE, rows_schema) as rows:
            current = -1
            for number, batch in _batches(files, columns, spec.batch_rows):
                while current < number:  # where each file's rows start (for error messages)
                    current += 1
                    file_starts[current] = int(index.ntotal)
                vectors = _vectors(batch, dim, files[number])
                finite = np.isfinite(vectors).all(axis=1)
                if not finite.all():
                    skipped += int((~finite).sum())
                    vectors = np.ascontiguousarray(vectors[finite])
                    batch = batch.filter(pa.array(finite))
                if model_columns:
                    pairs.update(dict.fromkeys(_model_pairs(batch, model_columns)))
                if not len(batch):
                    continue
                faiss.normalize_L2(vectors)
                index.add(vectors)
                hashes.append(_id_hashes(batch.column("id")))
                rows.write_table(pa.Table.from_batches([batch]).select(["id", *carried]),
                                 row_group_size=_ROWS_PER_GROUP)
            for later in range(current + 1, len(files)):  # files without rows at the end
                file_starts[later] = int(index.ntotal)
        if skipped:
            _LOG.warning("%d vectors with NaN or infinite values left out of the index (their "
                         "documents cannot be found): recompute them with `bertbeam embed`.", skipped)
        if index.ntotal == 0:
            raise SearchIndexError(f"--embeddings {embeddings!r} holds no rows" + (
                f" with finite vectors ({skipped} hold NaN or infinite values)." if skipped else "."))
        _refuse_duplicates(np.concatenate(hashes), workdir / ROWS_FILE, files, file_starts)
        model, local_dir, fingerprint = _the_model(pairs, files[0])
        faiss.write_index(index, str(workdir / VECTORS_FILE))
        manifest = Manifest(
            model=model, model_fingerprint=fingerprint, dimension=dim,
            count=int(index.ntotal), columns=tuple(carried), query_prompt=query_prompt(local_dir),
            document_prompt=_document_prompt(files), embeddings=embeddings,
            library_version=faiss.__version__,
            hnsw={"m": spec.m, "ef_construction": spec.ef_construction, "ef_search": spec.ef_search},
            built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            build_id=build_id, vectors_bytes=(workdir / VECTORS_FILE).stat().st_size,
            vectors_digest=_edges_digest(workdir / VECTORS_FILE),
            skipped_non_finite=skipped)
        (workdir / MANIFEST_FILE).write_text(manifest.to_json())
        staging.publish()
    finally:
        faiss.omp_set_num_threads(threads_before)
        staging.discard()
    return manifest


def _edges_digest(path: Path) -> str:
    """SHA-256 of a file's size, first and last MiB: tells a vectors file of another build
    (the graph's header and the last vectors differ) at the cost of 2 MiB read."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(_EDGE_BYTES))
        if size > _EDGE_BYTES:
            f.seek(max(_EDGE_BYTES, size - _EDGE_BYTES))
            digest.update(f.read())
    return digest.hexdigest()[:32]


class _Staging:
    """Where a build writes its files, and how they are published to ``output``.

    Local: a new directory beside ``output`` (same file system), renamed into place whole,
    the old index moved aside first and removed after, so a reader sees the old index or the
    new one, never a mix, and no file is written through a link planted in ``output``.
    Elsewhere (``gs://``): a local temporary directory whose files are copied up, the manifest
    removed first and written last; every file carries the build's id, which
    :meth:`SearchIndex.open` checks."""

    _INDEX_FILES = frozenset({MANIFEST_FILE, VECTORS_FILE, ROWS_FILE})

    def __init__(self, output: str):
        # on the first file opened (start-up)
        from fsspec.implementations.local import LocalFileSystem

        self._fs, root = url_to_fs(output)
        self._root = root.rstrip("/") or "/"
        self._local = isinstance(self._fs, LocalFileSystem)
        if self._local:
            target = Path(self._root)
            if target.is_symlink():
                raise SearchIndexError(f"--output {output} is a symbolic link; give the index "
                                       "directory itself.")
            if target.exists() and not target.is_dir():
                raise SearchIndexError(f"--output {output} is a file, not a directory.")
            others = sorted(p.name for p in target.iterdir()
                            if p.name not in self._INDEX_FILES) if target.exists() else []
            if others:
                raise SearchIndexError(
                    f"--output {output} holds files other than an index ({', '.join(others[:3])}"
                    f"{', ...' if len(others) > 3 else ''}); an index build replaces its directory "
                    "whole: give an empty directory, a new one, or an earlier index.")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                self.directory = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-",
                                                       dir=target.parent))
                return
            except OSError:  # a parent we may not write: the files are replaced one by one
                self._local = False
        self.directory = Path(tempfile.mkdtemp(prefix="bertbeam-index-"))

    def publish(self) -> None:
        if self._local:
            target = Path(self._root)
            old = target.parent / f".{target.name}.replaced-{uuid.uuid4().hex[:12]}"
            try:
                if target.exists():
                    os.rename(target, old)
            except OSError:  # a mount point, say: replace the files one by one
                self._copy_files()
                return
            os.rename(self.directory, target)
            shutil.rmtree(old, ignore_errors=True)
            return
        self._copy_files()

    def _copy_files(self) -> None:
        """The manifest removed first and written last; each file through a temporary name."""
        fs, root = self._fs, self._root
        fs.makedirs(root, exist_ok=True)
        if fs.exists(f"{root}/{MANIFEST_FILE}"):
            fs.rm(f"{root}/{MANIFEST_FILE}")
        for name in (VECTORS_FILE, ROWS_FILE, MANIFEST_FILE):
            with (self.directory / name).open("rb") as src, \
                    replacing(fs.unstrip_protocol(f"{root}/{name}")) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _check_files(local: Path, manifest: Manifest, location: str) -> None:
    """Refuses an index whose files are not the manifest's: truncated, or of another build
    (an index written by a bertbeam that recorded no build id is taken as it is)."""
    for name in (VECTORS_FILE, ROWS_FILE):
        if not (local / name).is_file():
            raise SearchIndexError(f"{location} is not a complete bertbeam index (no {name}); "
                                   "rebuild it.")
    if manifest.vectors_bytes:
        size = (local / VECTORS_FILE).stat().st_size
        if size != manifest.vectors_bytes:
            raise SearchIndexError(
                f"{location}/{VECTORS_FILE} is {size} bytes but {MANIFEST_FILE} says "
                f"{manifest.vectors_bytes} (truncated, or of another build): rebuild the index.")
        if manifest.vectors_digest and _edges_digest(local / VECTORS_FILE) != manifest.vectors_digest:
            raise SearchIndexError(f"{location}/{VECTORS_FILE} is not the file this index's "
                                   f"{MANIFEST_FILE} describes (another build's?): rebuild the index.")
    if manifest.build_id:
        try:
            meta = pq.read_metadata(local / ROWS_FILE)
        except (OSError, pa.ArrowException) as exc:
            raise SearchIndexError(f"{location}/{ROWS_FILE} cannot be read (damaged or truncated): "
                                   "rebuild the index.") from exc
        theirs = (meta.metadata or {}).get(_BUILD_ID_KEY, b"").decode()
        if theirs != manifest.build_id or meta.num_rows != manifest.count:
            raise SearchIndexError(f"{location}/{ROWS_FILE} is not the file this index's "
                                   f"{MANIFEST_FILE} describes (another build's?): rebuild the index.")


class SearchIndex:
    """A built index, opened for searching: vectors in memory, rows read on demand.

    Example::

        index = SearchIndex.open("idx/")
        for hit in index.search(["what is a generator?"], k=3)[0]:
            print(hit.id, round(hit.score, 3), hit.columns)
    """

    def __init__(self, location: str, manifest: Manifest, vectors: Any, rows_path: str,
                 workdir: str | None = None):
        self.location = location
        self.manifest = manifest
        self._vectors = vectors
        self._rows = pq.ParquetFile(rows_path)
        starts = [0]
        for g in range(self._rows.num_row_groups):
            starts.append(starts[-1] + self._rows.metadata.row_group(g).num_rows)
        self._group_starts = starts
        self._groups: OrderedDict[int, pa.Table] = OrderedDict()
        self._workdir = workdir
        self._encoder: QueryEncoder | None = None

    @classmethod
    def open(cls, location: str) -> SearchIndex:
        """Opens the index at ``location`` (local, ``gs://``, any fsspec URL; a remote index
        is copied to a temporary directory first).

        Raises:
            SearchIndexError: ``location`` holds no complete bertbeam index.
        """
        faiss = _require_faiss()
        fs, root = url_to_fs(location)
        root = root.rstrip("/")
        if not fs.exists(f"{root}/{MANIFEST_FILE}"):
            raise SearchIndexError(f"{location} is not a bertbeam index (no {MANIFEST_FILE}; build one "
                                   "with `bertbeam index build --embeddings GLOB --output DIR`).")
        manifest = Manifest.from_json(fs.cat(f"{root}/{MANIFEST_FILE}").decode(), location)
        workdir = None
        local = root
        # on the first file opened (start-up)
        from fsspec.implementations.local import LocalFileSystem

        if not isinstance(fs, LocalFileSystem):
            workdir = tempfile.mkdtemp(prefix="bertbeam-index-")
            for name in (VECTORS_FILE, ROWS_FILE):
                fs.get_file(f"{root}/{name}", f"{workdir}/{name}")
            local = workdir
        try:
            _check_files(Path(local), manifest, location)
            try:
                vectors = faiss.read_index(f"{local}/{VECTORS_FILE}")
            except RuntimeError as exc:  # FAISS's own error: a damaged file
                raise SearchIndexError(f"{location}/{VECTORS_FILE} cannot be read (damaged or "
                                       f"truncated): rebuild the index.") from exc
            vectors.hnsw.efSearch = int(manifest.hnsw.get("ef_search", IndexSpec.ef_search))
            if vectors.d != manifest.dimension or vectors.ntotal != manifest.count:
                raise SearchIndexError(
                    f"{location}: {VECTORS_FILE} holds {vectors.ntotal} vectors of dimension "
                    f"{vectors.d} but {MANIFEST_FILE} says {manifest.count} of "
                    f"{manifest.dimension}; rebuild it.")
            return cls(location, manifest, vectors, f"{local}/{ROWS_FILE}", workdir)
        except BaseException:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            raise

    def close(self) -> None:
        """Closes the rows file and removes the local copy of a remote index."""
        self._rows.close()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_ef_search(self, ef_search: int) -> None:
        """Sets the candidate list length of later searches (recall against latency)."""
        check_positive("ef_search", ef_search)
        self._vectors.hnsw.efSearch = ef_search

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Nearest documents of each query vector, best first; ``queries`` is
        ``(n, dimension)`` (or one vector), normalized here."""
        check_positive("k", k)
        faiss = _require_faiss()
        queries = np.array(queries, dtype=np.float32, ndmin=2, copy=True)
        if queries.ndim != 2 or queries.shape[1] != self.manifest.dimension:
            raise SearchIndexError(
                f"Query vectors have shape {queries.shape} but the index {self.location} holds "
                f"{self.manifest.dimension}-dimensional vectors of {self.manifest.model!r}.")
        faiss.normalize_L2(queries)
        scores, keys = self._vectors.search(queries, min(k, self.manifest.count))
        return [[self._hit(int(key), float(score)) for key, score in zip(row_keys, row_scores, strict=True)
                 if key >= 0] for row_keys, row_scores in zip(keys, scores, strict=True)]

    def search(self, texts: Sequence[str], k: int = 10, *, model: str | None = None) -> list[list[Hit]]:
        """Embeds ``texts`` with the index's model (and its query prompt) and searches.

        Args:
            texts: query texts.
            k: hits per query.
            model: a model URI to embed with instead of the manifest's; refused unless it is
                the same model (same fingerprint).

        Raises:
            SearchIndexError: the model differs from the one the index was built with, or
                its embeddings have another dimension.
        """
        check_positive("k", k)  # before a model loads for nothing
        return self.search_vectors(self.encoder(model).encode(texts), k)

    def encoder(self, model: str | None = None) -> QueryEncoder:
        """The QueryEncoder of this index's queries (made once, loaded on first use); ``model``
        as for :meth:`search`.

        Raises:
            SearchIndexError: the model differs from the one the index was built with.
        """
        if self._encoder is None or (model and model != self._encoder.uri):
            self._encoder = QueryEncoder.for_index(self.manifest, model=model)
        return self._encoder

    def _hit(self, key: int, score: float) -> Hit:
        group = bisect.bisect_right(self._group_starts, key) - 1
        table = self._groups.get(group)
        if table is None:
            table = self._rows.read_row_group(group)
            self._groups[group] = table
            if len(self._groups) > _CACHED_GROUPS:
                self._groups.popitem(last=False)
        self._groups.move_to_end(group)
        row = table.slice(key - self._group_starts[group], 1).to_pylist()[0]
        return Hit(id=row.pop("id"), score=score, columns=row)


class QueryEncoder:
    """Embeds query texts with a model through the pipeline's own steps (``Engine.infer``:
    encode, plan, run and postprocess of an ``EmbedTask``, as Tokenize, BatchByTokens,
    RunModel and Postprocess run them), so a query's vector is the one ``bertbeam embed``
    writes for the same text. Beam's RunInference machinery
    (``BertModelHandler``) is not imported: a search has no pipeline to run.

    Args:
        uri: the model, as ``--model`` takes it.
        prompt: text put before each query (the model's query prompt), if any.
        dimension: the dimension the queries must have (the index's); ``None`` skips the check.

    Example::

        vector = QueryEncoder("embedded:all-MiniLM-L6-v2").encode(["open a file"])[0]
    """

    def __init__(self, uri: str, *, prompt: str | None = None, dimension: int | None = None):
        self.uri = uri
        self.prompt = prompt
        self.dimension = dimension
        # One batch at a time, with all of the threads (as BertModelHandler runs). The query
        # prompt goes through the task, so its tokens leave pooling exactly when the
        # checkpoint's Pooling excludes prompts (None: the checkpoint's default prompt).
        run = RunSpec(model=ModelSpec(uri=uri, cpu_streams=1))
        self._spec = engine_spec(EmbedTask(prompt=prompt), run)
        self._batch = run.batch
        self._engine: Any = None

    @classmethod
    def for_index(cls, manifest: Manifest, *, model: str | None = None) -> QueryEncoder:
        """The encoder an index's queries need; refuses a model other than the index's.

        Raises:
            SearchIndexError: the model cannot be loaded or is not the one that built the index.
        """
        uri = model or manifest.model
        try:
            local_dir = resolve_model_dir(uri)
        except ModelLoadError as exc:
            raise SearchIndexError(f"Cannot load the model {uri!r} to embed the query: {exc}") from exc
        if not fingerprint_matches(local_dir, manifest.model_fingerprint):
            fingerprint = model_fingerprint(local_dir)
            what = "the model at that URI has changed since" if uri == manifest.model else "another model"
            raise SearchIndexError(
                f"The index was built with {manifest.model!r} (fingerprint "
                f"{manifest.model_fingerprint}) but {uri!r} has fingerprint {fingerprint}: "
                f"{what}. Search with the index's model, or rebuild the index.")
        return cls(uri, prompt=manifest.query_prompt, dimension=manifest.dimension)

    def load(self) -> QueryEncoder:
        """Loads the tokenizer and model now (the first :meth:`encode` does otherwise), e.g.
        on a thread while an interactive search waits for its first query."""
        if self._engine is None:
            engine = Engine.acquire(self._spec)
            check_task_fit(engine.config, self._spec.task.model_class, engine.uri)
            self._engine = engine
        return self

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dimension)`` float32 query embeddings."""
        if isinstance(texts, str) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise SearchIndexError(f"Queries must be a list of non-empty strings, got {texts!r:.200}.")
        engine = self.load()._engine
        docs = []
        for i, text in enumerate(texts):
            doc = check_document(str(i), text)  # the read stage's checks, as for a document
            docs.append(_refuse(doc, texts) if isinstance(doc, DeadLetter) else doc)
        results = engine.infer(DocumentChunk.of(docs), self._batch)
        if results.dead:
            _refuse(results.dead[0], texts)
        order = {doc_id: row for row, doc_id in enumerate(results.columns["id"])}
        vectors = np.asarray(results.columns["embedding"], dtype=np.float32)[
            [order[doc.id] for doc in docs]]
        if self.dimension is not None and vectors.shape[1] != self.dimension:
            raise SearchIndexError(
                f"{self.uri!r} makes {vectors.shape[1]}-dimensional query embeddings but the index "
                f"holds {self.dimension}-dimensional vectors: mismatched dimensions.")
        return vectors


def _refuse(dead: Any, texts: Sequence[str]) -> NoReturn:
    """Raises the SearchIndexError of a query's dead letter (its id is the query's index)."""
    raise SearchIndexError(f"Cannot embed the query {texts[int(dead.id)]!r:.200}: "
                           f"{dead.reason}: {dead.message}")
