"""A distilled student's speed against its teacher's through ``bertbeam label`` (issue 26).

Runs ``bertbeam label --task classify`` with each model on the same corpus, interleaved
(teacher, student, student, teacher, ``--rounds`` times), one torch thread by default, and
records each run's ``docs_per_second`` (documents written per second of the pipeline, from
its ``_SUMMARY.json``), the whole command's wall seconds (imports and start-up included) and
the load average before and after, then the student/teacher ratios pair by pair. On a shared
machine the load moves between runs: read the ratios beside it.

    python -m benchmarks.distill_speed --teacher models/teacher --student models/student \\
        --input 'demo/*.parquet' --work /tmp/speed [--threads 1] [--rounds 1] \\
        [--output benchmarks/results/distill-speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

# the console script beside this interpreter (a virtual environment's), else the one on PATH
_BERTBEAM = os.path.join(os.path.dirname(sys.executable), "bertbeam")
if not os.path.exists(_BERTBEAM):
    _BERTBEAM = shutil.which("bertbeam") or "bertbeam"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _label(model: str, corpus: str, out: str, threads: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    before = _load()
    started = time.perf_counter()
    subprocess.run([_BERTBEAM, "label", "--task", "classify",
                    "--model", model, "--input", corpus, "--output", out, "--quiet",
                    "--no-report", "--threads", str(threads)], check=True)
    wall = time.perf_counter() - started
    with open(os.path.join(out, "_SUMMARY.json")) as f:
        summary = json.load(f)
    return {"model": model, "written": summary["written"],
            "docs_per_second": summary["docs_per_second"],
            "pipeline_seconds": summary.get("pipeline_seconds"),
            "command_seconds": round(wall, 2),
            "command_docs_per_second": round(summary["written"] / wall, 2),
            "load_before": before, "load_after": _load()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--input", required=True, help="Parquet glob of the documents")
    p.add_argument("--work", required=True, help="scratch directory for the outputs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="teacher, student, student, teacher")
    p.add_argument("--output", default=None, help="JSON file for the results")
    args = p.parse_args()

    runs = []
    for r in range(args.rounds):
        for i, (role, model) in enumerate((("teacher", args.teacher), ("student", args.student),
                                           ("student", args.student), ("teacher", args.teacher))):
            run = _label(model, args.input, os.path.join(args.work, f"{r}-{i}-{role}"),
                         args.threads)
            runs.append({"role": role, **run})
            print(f"{role}: {run['docs_per_second']:.1f} docs/s in the pipeline, "
                  f"{run['command_docs_per_second']:.1f} for the whole command "
                  f"(load {run['load_before'][0]:.2f} -> {run['load_after'][0]:.2f})", flush=True)
    teachers = [x for x in runs if x["role"] == "teacher"]
    students = [x for x in runs if x["role"] == "student"]
    # pair by pair: the first teacher with the first student, the second with the second
    ratios = {key: [round(s[key] / t[key], 3) for t, s in zip(teachers, students, strict=True)]
              for key in ("docs_per_second", "command_docs_per_second")}
    result = {"input": args.input, "threads": args.threads, "runs": runs, "ratios": ratios,
              "cpu": os.cpu_count()}
    print(json.dumps(ratios))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
