"""``bertbeam index build``, ``bertbeam index search`` (and ``bertbeam search``, its short
name): the embedded search index from the shell."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

from bertbeam.cli.options import CommandParser, positive_int
from bertbeam.index.search import Hit, IndexSpec, SearchIndex, SearchIndexError, build_index

_MAX_VALUE_CHARS = 100


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", required=True,
                   help="results Parquet glob, e.g. 'out/results-*.parquet' (local, gs://, fsspec URL)")
    p.add_argument("--output", required=True, help="index directory (local, gs://, fsspec URL)")
    p.add_argument("--m", type=positive_int, default=IndexSpec.m, help="HNSW neighbours per node")
    p.add_argument("--ef-construction", type=positive_int, default=IndexSpec.ef_construction,
                   help="candidates kept while inserting (build time against recall)")
    p.add_argument("--ef-search", type=positive_int, default=IndexSpec.ef_search,
                   help="default search depth stored in the index (recall against latency)")
    p.add_argument("--batch-rows", type=positive_int, default=IndexSpec.batch_rows,
                   help="rows read at a time while building")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="build threads (default: all cores)")
    p.set_defaults(work=_build)


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", nargs="*",
                   help="query text (several: one search each); none: read queries from stdin, "
                        "one per line, and answer each as it comes (the model loads once)")
    p.add_argument("--index", required=True, help="index directory (local, gs://, fsspec URL)")
    p.add_argument("-k", type=positive_int, default=10, help="hits per query")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per query, one per line (JSON lines)")
    p.add_argument("--ef-search", type=positive_int, default=None,
                   help="override the index's search depth")
    p.add_argument("--model", default=None,
                   help="embed the query with this URI (must be the index's model)")
    p.set_defaults(work=_search)


_SEARCH_DESCRIPTION = ("Search an index built by `bertbeam index build`. Queries come from the "
                       "arguments, or from stdin one per line when none is given.")


def index_parser() -> CommandParser:
    """``bertbeam index`` with its subcommands ``build`` and ``search``."""
    p = CommandParser("bertbeam index", "The embedded search index: build one from "
                                        "`bertbeam embed` results, search it.", epilog=None)
    commands = p.add_subparsers(title="commands", dest="command", required=True,
                                parser_class=CommandParser)
    _add_build_args(commands.add_parser(
        "build", help="build an index from embeddings", epilog=None,
        description="Build an approximate-nearest-neighbour index from `bertbeam embed` results."))
    _add_search_args(commands.add_parser("search", help="search an index", epilog=None,
                                         description=_SEARCH_DESCRIPTION))
    return p


def search_parser() -> CommandParser:
    """``bertbeam search``: ``bertbeam index search`` under its short name."""
    p = CommandParser("bertbeam search", _SEARCH_DESCRIPTION, epilog=None)
    _add_search_args(p)
    return p


def _main(parser: CommandParser, argv: Sequence[str]) -> int:
    """Runs a command; a user error (a bad command line; SearchIndexError, InputError and
    ModelLoadError are ValueErrors; a missing file) is one line on stderr and exit status 2,
    no traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parser.parse_args([str(a) for a in argv])
        return args.work(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bertbeam: error: {exc}", file=sys.stderr)
        return 2


def run_index(argv: Sequence[str]) -> int:
    """``bertbeam index build|search ...``; returns the exit status (2 for a user error)."""
    return _main(index_parser(), argv)


def run_search(argv: Sequence[str]) -> int:
    """``bertbeam search --index IDX ["query" ...] [-k 10] [--json]``; returns the exit status."""
    return _main(search_parser(), argv)


def _build(args: argparse.Namespace) -> int:
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


def _search(args: argparse.Namespace) -> int:
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
