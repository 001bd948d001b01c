"""Streaming latency: ``bertbeam embed --streaming --input 'watch:DIR/*.parquet'`` fed at a
fixed arrival rate, end to end, as a user runs it.

    python -m benchmarks.streaming                       # 5, 10 and 50 docs/s, 40 s each
    python -m benchmarks.streaming --rates 50 --seconds 60 --out /tmp/results

The command runs in a process of its own with the default model (all-MiniLM-L6-v2) on the
CPU. After a warm-up file (model load and pipeline start are not a document's latency), the
feeder lands Parquet files of ``--docs-per-file`` demo documents at a fixed pace (renamed
into the watched directory, so each lands whole) so that documents arrive at ``--rate`` per
second (each of ``--rates`` in a run of its own); after ``--seconds`` it sends SIGINT, and the command stops once every landed row is
written. A document's latency runs from its file's landing to the modification time of the
results file that holds its row (arrival to written row: the watch's poll, the read, the
batching wait, the model and the write). Reported: latency p50/p90/p99/max, over all documents
and over the last fifth (a growing backlog shows there), the sustained rate (documents
written per second from the first landing to the last write) beside the engine's own rate on
the same texts (``Engine.infer`` in chunks of 25, no Beam: the most any pipeline gets from
this CPU now), and the machine with its load. Writes
``<out>/streaming.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def _land(inbox: Path, name: str, ids: list[str], texts: list[str]) -> float:
    temp = inbox.parent / f".{name}.tmp"
    pq.write_table(pa.table({"id": ids, "text": texts}), temp)
    os.replace(temp, inbox / name)
    return time.time()


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(q[0]), 3), "p90": round(float(q[1]), 3),
            "p99": round(float(q[2]), 3), "max": round(float(values.max()), 3),
            "mean": round(float(values.mean()), 3)}


def model_capacity(texts: list[str], model: str | None, docs: int = 200, chunk: int = 25,
                   backend: str = "torch") -> float:
    """Documents per second of the engine alone (``Engine.infer``, no Beam) over ``docs``
    demo texts in chunks of ``chunk``, on this machine now: the rate no pipeline can beat."""
    from bertbeam.config import BatchSpec, ModelSpec, RunSpec
    from bertbeam.core.engine import Engine, engine_spec
    from bertbeam.core.records import Document, DocumentChunk
    from bertbeam.tasks.embed import EmbedTask

    run = RunSpec(model=ModelSpec(uri=model, backend=backend) if model else
                  ModelSpec(backend=backend))
    engine = Engine.acquire(engine_spec(EmbedTask(), run))
    batches = [DocumentChunk.of([Document(f"d{i}", texts[i % len(texts)])
                                 for i in range(k, k + chunk)]) for k in range(0, docs, chunk)]
    engine.infer(batches[0], BatchSpec())  # warm-up
    started = time.perf_counter()
    for batch in batches:
        engine.infer(batch, BatchSpec())
    return docs / (time.perf_counter() - started)


def run(rate: float, seconds: float, docs_per_file: int, window: int, interval: float,
        max_wait: float, model: str | None, extra: list[str] | None = None) -> dict:
    from bertbeam.cli.demo import demo_texts

    extra = list(extra or [])
    texts = demo_texts()
    backend = extra[extra.index("--backend") + 1] if "--backend" in extra else "torch"
    capacity = model_capacity(texts, model, backend=backend)
    work = Path(tempfile.mkdtemp(prefix="bertbeam-streaming-bench-"))
    inbox, out = work / "in", work / "out"
    inbox.mkdir()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    landed: dict[str, float] = {}
    _land(inbox, "warmup.parquet", ["warmup"], [texts[0]])
    argv = [sys.executable, "-m", "bertbeam.cli.main", "embed", "--streaming",
            "--input", f"watch:{inbox}/*.parquet", "--output", str(out),
            "--window-seconds", str(window), "--watch-interval", str(interval),
            "--max-wait", str(max_wait)] + (["--model", model] if model else []) + extra
    started = time.time()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        while not list(out.glob("results-*.parquet")):
            if proc.poll() is not None:
                raise RuntimeError(f"the command ended: {proc.communicate()[1][-2000:]}")
            if time.time() - started > 300:
                raise RuntimeError("no result of the warm-up file within 300 s")
            time.sleep(0.1)
        ready = time.time() - started
        files = int(rate * seconds / docs_per_file)
        pace = docs_per_file / rate
        t0 = time.time()
        n = 0
        for k in range(files):
            due = t0 + k * pace
            time.sleep(max(0.0, due - time.time()))
            name = f"f{k:06d}.parquet"
            ids = [f"f{k:06d}-{i}" for i in range(docs_per_file)]
            landed[name] = _land(inbox, name, ids,
                                 [texts[(n + i) % len(texts)] for i in range(docs_per_file)])
            n += docs_per_file
        feed_seconds = time.time() - t0
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"the command failed ({proc.returncode}): {stderr[-2000:]}")
    arrival = {}
    for name, when in landed.items():
        for i in range(docs_per_file):
            arrival[f"{name[:-8]}-{i}"] = when
    written: dict[str, float] = {}
    for f in out.glob("results-*.parquet"):
        mtime = f.stat().st_mtime
        for doc_id in pq.read_table(f, columns=["id"]).column("id").to_pylist():
            written[doc_id] = mtime
    missing = sorted(set(arrival) - set(written))
    order = sorted(arrival, key=arrival.get)
    latency = np.array([written[d] - arrival[d] for d in order if d in written])
    tail = latency[int(len(latency) * 0.8):]
    t0_arrival = min(arrival.values())
    timeline: dict[int, float] = {}  # second of arrival -> the worst latency of its documents
    for d in order:
        if d in written:
            second = int(arrival[d] - t0_arrival)
            timeline[second] = round(max(timeline.get(second, 0.0), written[d] - arrival[d]), 3)
    last_write = max(written[d] for d in order if d in written)
    summary = json.loads((out / "_SUMMARY.json").read_text())
    return {
        "rate_docs_per_second": rate,
        "feed_seconds": round(feed_seconds, 2),
        "documents": len(arrival),
        "written": len(latency),
        "missing": len(missing),
        "docs_per_file": docs_per_file,
        "window_seconds": window,
        "watch_interval": interval,
        "max_wait": max_wait,
        "model": model or "embedded:all-MiniLM-L6-v2",
        "options": " ".join(extra),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "start_to_first_result_seconds": round(ready, 1),
        "latency_seconds": _quantiles(latency),
        "latency_last_fifth_seconds": _quantiles(tail),
        "worst_latency_by_arrival_second": [timeline[k] for k in sorted(timeline)],
        "model_alone_docs_per_second": round(capacity, 1),
        "sustained_docs_per_second": round(len(latency) / (last_write - min(arrival.values())), 1),
        "command_summary": {k: summary.get(k) for k in ("read", "written", "dead_lettered",
                                                         "accounted", "windows")},
        "stop_line": stdout.strip().splitlines()[-1] if stdout.strip() else "",
    }


def _machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "commit": commit, "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="5,10,50",
                        help="arrival rates to run, documents per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to feed each")
    parser.add_argument("--docs-per-file", type=int, default=5)
    parser.add_argument("--window-seconds", type=int, default=10)
    parser.add_argument("--watch-interval", type=float, default=0.2)
    parser.add_argument("--max-wait", type=float, default=0.1)
    parser.add_argument("--model", default=None, help="default: the embedded MiniLM")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="streaming", help="output file stem")
    parser.add_argument("--bertbeam-args", default="",
                        help="more `bertbeam embed` flags, one string (e.g. '--backend onnx')")
    args = parser.parse_args(argv)
    runs = [run(float(rate), args.seconds, args.docs_per_file, args.window_seconds,
                args.watch_interval, args.max_wait, args.model, args.bertbeam_args.split())
            for rate in args.rates.split(",")]
    result = {"runs": runs, "machine": _machine()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if all(r["missing"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
