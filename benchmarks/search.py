"""The search benchmark: bertbeam's embedded index on many vectors, model excluded.

    python -m benchmarks.search                       # 50,000 x 384, 1,000 queries
    python -m benchmarks.search --compare-libraries   # + FAISS, hnswlib, usearch side by side
                                                      #   (pip install hnswlib usearch)
    python -m benchmarks.search --smoke               # tiny sizes (the test suite's run)

The vectors are synthetic sentence-embedding-like data: L2-normalized points scattered
around clusters (a fixed seed), written as ``bertbeam embed`` results Parquet with a carried
``title`` column. It measures the build from Parquet (vectors/s, peak RSS of the build
process), single-query latency of ``SearchIndex.search_vectors`` (the HNSW search plus the
id and carried-column lookup; no model) and recall@k against exact cosine search, over a
sweep of ``ef_search``. Writes ``<out>/search.json`` and ``<out>/search.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EF_SWEEP = (16, 32, 64, 128, 256)
MODEL = "embedded:all-MiniLM-L6-v2"  # the `model` column: the index fingerprints it


def clustered_vectors(n: int, dim: int, *, seed: int, clusters: int = 1000,
                      spread: float = 1.5) -> np.ndarray:
    """``n`` L2-normalized float32 vectors around ``clusters`` fixed centres (the centres
    depend on ``dim`` and ``clusters`` only, so base and query sets share them)."""
    centres = np.random.default_rng(1234).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, clusters, n)]
    points += spread * rng.standard_normal((n, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the ``k`` most cosine-similar base vectors of each query, best first."""
    out = []
    for start in range(0, len(queries), 256):
        sims = queries[start:start + 256] @ base.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true ``k`` neighbours among the ``k`` found, per query."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def write_embeddings(directory: Path, base: np.ndarray, files: int = 4) -> str:
    """``base`` as embed results (``id`` = ``v<row>``, a carried ``title``); returns the glob."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    n, dim = base.shape
    per_file = -(-n // files)
    for i in range(files):
        part = base[i * per_file:(i + 1) * per_file]
        rows = range(i * per_file, i * per_file + len(part))
        pq.write_table(pa.table({
            "id": [f"v{r}" for r in rows],
            "title": [f"document {r}" for r in rows],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), dim),
            "n_tokens": pa.array([64] * len(part), pa.int32()),
            "n_chunks": pa.array([1] * len(part), pa.int32()),
            "truncated": [False] * len(part),
            "model": [MODEL] * len(part),
        }), directory / f"results-{i:05d}-of-{files:05d}.parquet", row_group_size=10_000)
    return str(directory / "results-*.parquet")


def _build_child(glob: str, output: str, threads: int) -> None:
    """Runs in its own process: builds the index and prints seconds and peak RSS as JSON."""
    from bertbeam.index.search import IndexSpec, build_index

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    manifest = build_index(glob, output, spec=IndexSpec(threads=threads))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "count": manifest.count,
                      "rss_before_build_mb": before,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def build(glob: str, output: str, threads: int) -> dict:
    """The build in a fresh interpreter, so that its peak RSS is its own."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.search", "--build-child", glob, output,
                           "--threads", str(threads)],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"index build failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _latencies(search, queries: np.ndarray) -> tuple[list[int], list[float]]:
    rows, seconds = [], []
    for query in queries:
        start = time.perf_counter()
        hits = search(query)
        seconds.append(time.perf_counter() - start)
        rows.append(hits)
    return rows, seconds


def measure_index(location: str, queries: np.ndarray, truth: np.ndarray, k: int) -> list[dict]:
    """Recall@k and single-query latency of bertbeam's index for each ``ef_search``."""
    from bertbeam.index.search import SearchIndex

    points = []
    with SearchIndex.open(location) as index:
        index.search_vectors(queries[:50], k)  # warm the row-group cache and the graph pages
        for ef in EF_SWEEP:
            index.set_ef_search(ef)
            hits, seconds = _latencies(lambda q: index.search_vectors(q, k)[0], queries)
            found = np.array([[int(h.id[1:]) for h in row] for row in hits])
            points.append({"ef_search": ef, "recall": recall_at_k(found, truth), **_stats(seconds)})
    return points


def _stats(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


def compare_libraries(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int,
                      threads: int) -> dict:
    """The three HNSW libraries on the same vectors with bertbeam's defaults (M,
    ef_construction, ef_search of ``IndexSpec``): build rate (``threads`` threads),
    single-query latency, recall, memory added."""
    import psutil

    from bertbeam.index.search import IndexSpec

    m, ef_add, ef = IndexSpec.m, IndexSpec.ef_construction, IndexSpec.ef_search

    def faiss_lib():
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(base.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_add
        yield lambda: index.add(base)
        index.hnsw.efSearch = ef
        yield lambda q: index.search(q[None], k)[1][0]

    def hnswlib_lib():
        import hnswlib

        index = hnswlib.Index(space="ip", dim=base.shape[1])
        index.init_index(max_elements=len(base), M=m, ef_construction=ef_add)
        index.set_num_threads(threads)
        yield lambda: index.add_items(base, np.arange(len(base)))
        index.set_ef(ef)
        index.set_num_threads(1)
        yield lambda q: index.knn_query(q, k)[0][0]

    def usearch_lib():
        from usearch.index import Index

        index = Index(ndim=base.shape[1], metric="cos", dtype="f32", connectivity=m,
                      expansion_add=ef_add, expansion_search=ef)
        yield lambda: index.add(np.arange(len(base)), base, threads=threads)
        yield lambda q: index.search(q, k).keys

    out = {}
    process = psutil.Process()
    for name, make in (("faiss", faiss_lib), ("hnswlib", hnswlib_lib), ("usearch", usearch_lib)):
        try:
            steps = make()
            rss = process.memory_info().rss
            add = next(steps)
            start = time.perf_counter()
            add()
            seconds = time.perf_counter() - start
            added = (process.memory_info().rss - rss) / 2**20
            search = next(steps)
        except ImportError as exc:
            out[name] = {"error": f"not installed: {exc}"}
            continue
        found, lat = _latencies(search, queries)
        out[name] = {"build_vectors_per_second": len(base) / seconds, "memory_added_mb": added,
                     "recall": recall_at_k(np.array(found), truth), **_stats(lat)}
    return out


def chart(result: dict, path: str) -> None:
    """Recall against p50 latency over the ef_search sweep; library bars when compared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    libraries = {n: r for n, r in result.get("libraries", {}).items() if "error" not in r}
    fig, axes = plt.subplots(1, 2 if libraries else 1, figsize=(11 if libraries else 6, 4.2),
                             squeeze=False)
    curve = result["sweep"]
    ax = axes[0][0]
    ax.plot([p["p50_ms"] for p in curve], [p["recall"] for p in curve], "o-", color="tab:blue")
    for p in curve:
        ax.annotate(f"ef {p['ef_search']}", (p["p50_ms"], p["recall"]), fontsize=8,
                    textcoords="offset points", xytext=(4, -10))
    ax.axhline(0.95, color="tab:gray", linestyle=":", linewidth=1)
    ax.set_xlabel("query p50 latency, ms (model excluded)")
    ax.set_ylabel(f"recall@{result['k']} vs exact search")
    ax.set_title(f"bertbeam index: {result['vectors']:,} x {result['dimension']}, "
                 f"build {result['build']['vectors_per_second']:,.0f} vectors/s", fontsize=9)
    if libraries:
        bars = axes[0][1]
        names = list(libraries)
        bars.barh(names, [libraries[n]["build_vectors_per_second"] for n in names], color="tab:gray")
        for y, n in enumerate(names):
            r = libraries[n]
            bars.text(r["build_vectors_per_second"], y,
                      f" p50 {r['p50_ms']:.2f} ms, recall {r['recall']:.3f}", va="center", fontsize=8)
        hnsw = result["hnsw"]
        bars.set_xlabel(f"build vectors/s ({result['threads']} threads), M={hnsw['m']}, "
                        f"ef_construction {hnsw['ef_construction']}, ef_search {hnsw['ef_search']}")
        bars.set_xlim(0, max(r["build_vectors_per_second"] for r in libraries.values()) * 1.7)
        bars.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hnsw_defaults() -> dict:
    from bertbeam.index.search import IndexSpec

    return {"m": IndexSpec.m, "ef_construction": IndexSpec.ef_construction, "ef_search": IndexSpec.ef_search}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="build threads")
    parser.add_argument("--compare-libraries", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="2,000 x 32, 50 queries")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--build-child", nargs=2, metavar=("GLOB", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_child:
        _build_child(*args.build_child, args.threads)
        return 0
    if args.smoke:
        args.vectors, args.dim, args.queries = 2000, 32, 50
    base = clustered_vectors(args.vectors, args.dim, seed=1)
    queries = clustered_vectors(args.queries, args.dim, seed=2)
    truth = exact_neighbours(base, queries, args.k)
    with tempfile.TemporaryDirectory() as tmp:
        glob = write_embeddings(Path(tmp) / "results", base)
        built = build(glob, f"{tmp}/idx", args.threads)
        index_mb = sum(f.stat().st_size for f in Path(f"{tmp}/idx").iterdir()) / 2**20
        sweep = measure_index(f"{tmp}/idx", queries, truth, args.k)
    default = next(p for p in sweep if p["ef_search"] == 64)
    result = {
        "vectors": args.vectors, "dimension": args.dim, "queries": args.queries, "k": args.k,
        "threads": args.threads, "hnsw": _hnsw_defaults(), "data": "clustered synthetic (1000 centres, spread 1.5), L2-normalized",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "build": {"seconds": built["seconds"], "vectors_per_second": args.vectors / built["seconds"],
                  "peak_rss_mb": built["peak_rss_mb"], "rss_before_build_mb": built["rss_before_build_mb"],
                  "index_mb": index_mb},
        "default": default,
        "sweep": sweep,
    }
    if args.compare_libraries:
        result["libraries"] = compare_libraries(base, queries, truth, args.k, args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "search-smoke" if args.smoke else "search"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(result, str(out / f"{name}.png"))
    print(f"build {result['build']['vectors_per_second']:,.0f} vectors/s "
          f"(peak RSS {built['peak_rss_mb']:.0f} MiB, index {index_mb:.0f} MiB); "
          f"ef_search 64: recall@{args.k} {default['recall']:.4f}, p50 {default['p50_ms']:.3f} ms, "
          f"p95 {default['p95_ms']:.3f} ms")
    for point in sweep:
        print(f"  ef_search {point['ef_search']:>3}: recall {point['recall']:.4f}  p50 {point['p50_ms']:.3f} ms")
    for lib, row in result.get("libraries", {}).items():
        print(f"  {lib}: {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
