"""``bertbeam index build`` and ``bertbeam search``: the embedded search index from the shell."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from bertbeam.index.search import Hit, SearchIndex

_MAX_VALUE_CHARS = 100


def _index_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bertbeam index build",
        description="Build an approximate-nearest-neighbour index from `bertbeam embed` results.")
    from bertbeam.index.search import IndexSpec

    p.add_argument("--embeddings", required=True,
                   help="results Parquet glob, e.g. 'out/results-*.parquet' (local, gs://, fsspec URL)")
    p.add_argument("--output", required=True, help="index directory (local, gs://, fsspec URL)")
    p.add_argument("--m", type=int, default=IndexSpec.m, help="HNSW neighbours per node")
    p.add_argument("--ef-construction", type=int, default=IndexSpec.ef_construction)
    p.add_argument("--ef-search", type=int, default=IndexSpec.ef_search,
                   help="default search depth stored in the index (recall against latency)")
    p.add_argument("--batch-rows", type=int, default=IndexSpec.batch_rows,
                   help="rows read at a time while building")
    p.add_argument("--threads", type=int, default=None, help="build threads (default: all cores)")
    return p


def _search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bertbeam search",
        description="Search an index built by `bertbeam index build`. Queries come from the "
                    "arguments, or from stdin one per line when none is given.")
    p.add_argument("query", nargs="*",
                   help="query text (several: one search each); none: read queries from stdin, "
                        "one per line, and answer each as it comes (the model loads once)")
    p.add_argument("--index", required=True, help="index directory (local, gs://, fsspec URL)")
    p.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per query, one per line (JSON lines)")
    p.add_argument("--ef-search", type=int, default=None, help="override the index's search depth")
    p.add_argument("--model", default=None,
                   help="embed the query with this URI (must be the index's model)")
    return p


def _main(work: Callable[[list[str]], int], argv: list[str]) -> int:
    """Runs a command; a user error (SearchIndexError, InputError and ModelLoadError are
    ValueErrors; a missing file) is one line on stderr and exit status 2, no traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return work(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bertbeam: error: {exc}", file=sys.stderr)
        return 2


def run_index(argv: list[str]) -> int:
    """``bertbeam index build ...``; returns the exit code (2 for a user error)."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: bertbeam index build --embeddings GLOB --output DIR [options]\n"
              "       (bertbeam index build --help)")
        return 0 if argv else 2
    if argv[0] != "build":
        print(f"bertbeam index: unknown subcommand {argv[0]!r}; the one subcommand is 'build'.",
              file=sys.stderr)
        return 2
    return _main(_build, argv[1:])


def _build(argv: list[str]) -> int:
    from bertbeam.index.search import IndexSpec, build_index

    args = _index_parser().parse_args(argv)
    spec = IndexSpec(m=args.m, ef_construction=args.ef_construction, ef_search=args.ef_search,
                     batch_rows=args.batch_rows, threads=args.threads)
    start = time.perf_counter()
    manifest = build_index(args.embeddings, args.output, spec=spec)
    seconds = time.perf_counter() - start
    carried = f", carrying {', '.join(manifest.columns)}" if manifest.columns else ""
    print(f"bertbeam index: {manifest.count} vectors of dimension {manifest.dimension} from "
          f"{manifest.model} in {seconds:.1f} s ({manifest.count / seconds:.0f} vectors/s){carried} "
          f"-> {args.output}")
    return 0


def run_search(argv: list[str]) -> int:
    """``bertbeam search --index IDX ["query" ...] [-k 10] [--json]``; returns the exit code."""
    return _main(_search, argv)


def _search(argv: list[str]) -> int:
    from bertbeam.index.search import SearchIndex

    args = _search_parser().parse_args(argv)
    with SearchIndex.open(args.index) as index:
        if args.ef_search is not None:
            index.set_ef_search(args.ef_search)
        if args.query:
            results = index.search(args.query, args.k, model=args.model)
            for query, hits in zip(args.query, results, strict=True):
                _print_hits(query, hits, as_json=args.json, heading=len(args.query) > 1)
            return 0
        return _search_stdin(index, args)


def _search_stdin(index: SearchIndex, args: argparse.Namespace) -> int:
    """Answers queries read from stdin, one per line, each as soon as it is read; blank lines
    are skipped. A query that cannot be embedded is one error line (exit status 2 at the end),
    the next ones are still answered. The model loads on a thread while the first query is
    typed; a terminal gets a prompt on stderr."""
    from concurrent.futures import ThreadPoolExecutor

    from bertbeam.index.search import SearchIndexError

    interactive = sys.stdin.isatty()
    with ThreadPoolExecutor(1, thread_name_prefix="bertbeam-load") as pool:
        loading = pool.submit(lambda: index.encoder(args.model).load())
        status = 0
        try:
            for line in _lines(sys.stdin, "query> " if interactive else None):
                query = line.strip()
                if not query:
                    continue
                loading.result()  # a model that cannot serve this index fails here, once
                try:
                    hits = index.search([query], args.k, model=args.model)[0]
                except SearchIndexError as exc:
                    print(f"bertbeam: error: {exc}", file=sys.stderr, flush=True)
                    status = 2
                    continue
                _print_hits(query, hits, as_json=args.json, heading=not args.json)
                sys.stdout.flush()
        except KeyboardInterrupt:
            status = status or 130
        if interactive:
            print(file=sys.stderr)
    return status


def _lines(stream: TextIO, prompt: str | None) -> Iterator[str]:
    """The lines of ``stream``, with ``prompt`` on stderr before each one (for a terminal)."""
    while True:
        if prompt:
            print(prompt, end="", file=sys.stderr, flush=True)
        line = stream.readline()
        if not line:
            return
        yield line


def _print_hits(query: str, hits: list[Hit], *, as_json: bool, heading: bool) -> None:
    if as_json:
        from bertbeam.index.search import hits_json  # strict JSON: no NaN, no overwritten keys

        print(hits_json(query, hits))
        return
    if heading:
        print(f"# {query}")
    for rank, hit in enumerate(hits, 1):
        extra = "".join(f"  {name}={_short(value)}" for name, value in hit.columns.items())
        print(f"{rank:>3}  {hit.score:.4f}  {hit.id}{extra}")


def _short(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS - 1] + "…"
