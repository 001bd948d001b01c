"""The cost of a nightly rerun: a full ``bertbeam embed`` of N documents, then a rerun with 5%
of the texts changed and ``--previous`` pointing at the first run.

    python -m benchmarks.nightly                    # 20,000 documents (long on a laptop CPU)
    python -m benchmarks.nightly --docs 2000        # a smaller check

Each run is a process of its own, timed from start to exit (start-up, preflight, the join and
the summary included), as a scheduler sees it. Writes ``<out>/nightly.json`` and prints the
ratio; the ratio is what to read (both runs share the machine's load), not the seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.corpus import write_corpus

REPO = Path(__file__).resolve().parent.parent
CHANGED = 0.05


def change_texts(source_glob: str, directory: Path, share: float, seed: int = 0) -> int:
    """Copies the corpus to ``directory`` with ``share`` of its texts edited; returns how many."""
    from bertbeam.filesystems import expand_glob

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    changed = 0
    for path in expand_glob(source_glob):
        table = pq.read_table(path)
        texts = table.column("text").to_pylist()
        picked = rng.random(len(texts)) < share
        texts = [f"{t} (edited)" if p else t for t, p in zip(texts, picked, strict=True)]
        changed += int(picked.sum())
        table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts))
        pq.write_table(table, directory / Path(path).name, row_group_size=1000)
    return changed


def timed_embed(input_glob: str, output: Path, *extra: str) -> dict:
    """Runs ``bertbeam embed`` in a fresh process; returns its wall time and summary."""
    argv = [sys.executable, "-m", "bertbeam.cli", "embed", "--input", input_glob,
            "--output", str(output), "--no-report", *extra]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((output / "_SUMMARY.json").read_text())
    keys = ("read", "computed", "carried_forward", "windows", "real_tokens", "pipeline_seconds",
            "process_seconds")
    return {"seconds": round(seconds, 1), **{k: summary[k] for k in keys}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=20_000)
    p.add_argument("--changed", type=float, default=CHANGED, help="share of texts edited")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args, extra = p.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="bertbeam-nightly-") as tmp:
        root = Path(tmp)
        corpus = write_corpus(root / "day-1", args.docs, files=4)
        changed = change_texts(corpus.glob, root / "day-2", args.changed)
        full = timed_embed(corpus.glob, root / "out-1", *extra)
        print(f"full run: {full}", flush=True)
        rerun = timed_embed(str(root / "day-2" / "*.parquet"), root / "out-2",
                            "--previous", str(root / "out-1"), *extra)
        print(f"rerun:    {rerun}", flush=True)
    if rerun["computed"] != changed:
        raise RuntimeError(f"the rerun computed {rerun['computed']} documents, {changed} changed")
    result = {"docs": args.docs, "changed": changed, "extra_flags": extra, "full": full,
              "rerun": rerun, "ratio": round(rerun["seconds"] / full["seconds"], 3),
              "pipeline_ratio": round(rerun["pipeline_seconds"] / full["pipeline_seconds"], 3)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nightly.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.docs} documents, {changed} changed: the rerun took {result['ratio']:.1%} of "
          f"the full run's wall time ({result['pipeline_ratio']:.1%} of its pipeline time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
