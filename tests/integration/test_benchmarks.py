"""The benchmark: corpus, FLOPs formula, report, the quick mode and the GPU script's CPU smoke
mode end to end (no speed thresholds: the numbers are ratios read by people, not gates)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from benchmarks import report
from benchmarks.corpus import benchmark_texts, long_texts, write_corpus, write_texts


def test_corpus_is_a_fixed_shuffle_and_a_prefix_of_the_larger_size(tmp_path):
    small, large = benchmark_texts(50), benchmark_texts(200)
    assert small == large[:50] and small == benchmark_texts(50)
    corpus = write_corpus(tmp_path, 30, files=2)
    import pyarrow.parquet as pq

    from bertbeam.filesystems import expand_glob

    ids = [i for f in expand_glob(corpus.glob) for i in pq.read_table(f)["id"].to_pylist()]
    assert ids == corpus.ids and len(set(ids)) == 30


def test_long_texts_are_many_windows_long_and_a_fixed_prefix():
    short, longer = long_texts(3, tokens=1500), long_texts(5, tokens=1500)
    assert short == longer[:3]
    assert all(4800 <= len(t) < 4800 + 22_010 for t in longer)  # 1500 x 3.2 chars, one demo text over at most
    assert len(set(longer)) == 5


@pytest.mark.parametrize("long_docs", ["truncate", "chunk"])
def test_the_sorted_loop_embeds_as_bertbeam_does(tmp_path, tiny_model, long_docs):
    """The loop is a ceiling only if it does bertbeam's work: the same windows (stride
    included), pooling, normalizing and merging of a long document's windows."""
    import numpy as np

    from benchmarks.contenders import CONTENDERS, Job, loop_embeddings
    from bertbeam.beam.writing import read_table

    corpus = write_texts(tmp_path / "corpus", benchmark_texts(12) + long_texts(3, tokens=200))
    job = Job(corpus_glob=corpus.glob, model_dir=tiny_model("bert"), threads=1, max_length=64,
              work_dir=str(tmp_path), token_budget=512, long_docs=long_docs)
    vectors, loop = loop_embeddings(job)
    bertbeam = CONTENDERS["bertbeam"](job)
    table = read_table(str(tmp_path / "out"), columns=["id", "embedding", "n_chunks"]).sort_by("id")
    assert table.column("id").to_pylist() == corpus.ids
    assert (max(table.column("n_chunks").to_pylist()) > 1) == (long_docs == "chunk")
    np.testing.assert_allclose(vectors, np.stack(table.column("embedding").to_numpy(zero_copy_only=False)),
                               atol=2e-5)
    assert loop.real_tokens == bertbeam.real_tokens and 0 < loop.steady_seconds < loop.seconds
    assert loop.batches >= loop.padded_tokens / 512 and bertbeam.batches >= bertbeam.padded_tokens / 512


def test_model_flops_follow_the_stated_formula():
    config = SimpleNamespace(num_hidden_layers=6, hidden_size=384, intermediate_size=1536)
    params = 6 * (4 * 384**2 + 2 * 384 * 1536)
    assert params == 10_616_832  # MiniLM-L6's encoder matrices
    expected = sum(2 * n * params + 4 * 6 * n * n * 384 for n in (10, 100))
    assert report.model_flops([10, 100], config) == expected


def test_summary_rates_ratios_table_and_chart(tmp_path):
    runs = {
        "bertbeam": [{"docs": 100, "seconds": s, "real_tokens": 900, "padded_tokens": 1000,
                      "peak_rss_mb": 700.0} for s in (2.0, 2.5, 3.0)],
        "mltransform": [{"error": "ImportError: no"}],
        "st-encode": [{"docs": 100, "seconds": 5.0, "real_tokens": 900, "padded_tokens": None,
                       "peak_rss_mb": 800.0}],
    }
    rows = {n: report.summarize(r, real_tokens=900, flops=1e10, peak_flops=1e11)
            for n, r in runs.items()}
    assert rows["bertbeam"]["docs_per_second"] == 40.0  # median of three times
    assert rows["bertbeam"]["padding_efficiency"] == 0.9
    assert rows["bertbeam"]["mfu"] == pytest.approx(0.04)
    assert rows["st-encode"]["padding_efficiency"] is None
    assert rows["mltransform"] == {"error": "ImportError: no"}
    assert report.ratio(rows, "bertbeam", "st-encode") == 2.0
    assert report.ratio(rows, "bertbeam", "mltransform") is None
    text = report.table(rows)
    assert "| bertbeam | 40.0 |" in text and "error: ImportError" in text
    report.chart(rows, str(tmp_path / "chart.png"), title="test")
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"


def test_shutdown_is_timed_from_the_last_batch_and_the_exit_apart():
    from benchmarks.run import with_shutdown

    timed = with_shutdown({"last_batch_at": 100.0, "returned_at": 101.5}, exited_at=102.0)
    assert timed["shutdown_seconds"] == 2.0 and timed["exit_seconds"] == 0.5
    # A peer without a timed batch: its job's end is its last batch.
    assert with_shutdown({"returned_at": 101.5}, exited_at=102.0)["shutdown_seconds"] == 0.5
    runs = [{"docs": 10, "seconds": 1.0, "peak_rss_mb": 1.0, "process_seconds": 4.0,
             "startup_seconds": 0.5, "steady_seconds": 0.25, **with_shutdown(
                 {"last_batch_at": 100.0, "returned_at": 100.0 + tail}, exited_at=100.0 + tail + 1)}
            for tail in (0.25, 1.0, 3.0)]
    row = report.summarize(runs, real_tokens=10, flops=1.0, peak_flops=None)
    assert (row["shutdown_seconds"], row["exit_seconds"]) == (2.0, 1.0)  # medians
    assert "| bertbeam | 0.50 | 0.25 | 2.00 | 1.00 | 4.00 |" in report.phases({"bertbeam": row})


@pytest.mark.slow
def test_quick_mode_runs_every_contender_and_reports(tmp_path):
    """``python -m benchmarks.run --quick`` on a few documents: every contender reports a
    rate or an error string, and the JSON, PNG and ratios are written."""
    from benchmarks.run import DEFAULT_CONTENDERS, main

    assert main(["--quick", "--docs", "24", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick.json").read_text())
    assert set(result["contenders"]) == set(DEFAULT_CONTENDERS)
    for name, row in result["contenders"].items():
        assert "docs_per_second" in row or "error" in row, name
    assert result["contenders"]["bertbeam"]["docs"] == 24
    assert result["contenders"]["sorted-loop"]["docs"] == 24
    bertbeam = result["contenders"]["bertbeam"]
    assert bertbeam["shutdown_seconds"] > bertbeam["exit_seconds"] > 0
    assert result["machine"]["gemm_peak_gflops"] > 0
    assert "bertbeam / sorted-loop" in result["ratios"]
    assert result["ratios"]["bertbeam / sorted-loop"]["process_ratio"] > 0  # interpreter start to exit
    assert (tmp_path / "quick.png").exists()


GPU_ROW_KEYS = {"cores", "docs", "docs_per_second", "tokens_per_second", "mfu", "peak_rss_mb",
                "startup_seconds", "steady_seconds", "steady_docs_per_second",
                "steady_tokens_per_second", "steady_mfu", "process_docs_per_second", "gpu_peak_mb"}


def test_gpu_script_smoke_mode_reports_every_figure(tmp_path):
    """``python -m benchmarks.gpu --smoke`` (tiny sizes, CPU, float32, in this process) runs
    every suite and contender and writes every figure the GPU run is for: steady-state and
    whole-process rates, start-up, MFU, memory, the targets and the CPU agreement; it leaves
    this process as it found it (cores, patched classes)."""
    import os

    from sentence_transformers import SentenceTransformer

    from benchmarks.gpu import main
    from bertbeam.core.engine import Engine

    before = (os.sched_getaffinity(0), Engine.submit, Engine.collect_parts, SentenceTransformer.preprocess)
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    assert (os.sched_getaffinity(0), Engine.submit, Engine.collect_parts, SentenceTransformer.preprocess) == before
    check_gpu_result(tmp_path)


@pytest.mark.slow
def test_gpu_script_smoke_mode_with_a_process_per_contender(tmp_path):
    """The same with every contender in a process of its own, as on the GPU: the job travels
    as JSON, the 4-core entries pin their process, each reports its own memory."""
    from benchmarks.gpu import main

    assert main(["--smoke", "--no-in-process", "--out", str(tmp_path)]) == 0
    rows = check_gpu_result(tmp_path)["suites"]["minilm"]["contenders"]
    assert rows["bertbeam"]["process_docs_per_second"] < rows["bertbeam"]["docs_per_second"]


def check_gpu_result(out) -> dict:
    """Asserts that ``out/gpu-smoke.json`` holds every figure of the GPU run and returns it."""
    import os

    from benchmarks.gpu import SIZES, TARGETS

    result = json.loads((out / "gpu-smoke.json").read_text())
    assert (out / "gpu-smoke.png").read_bytes()[:4] == b"\x89PNG" and result["complete"]
    env = result["environment"]
    assert env["device"] and env["cpus"] >= 1 and (env["commit"] is None or len(env["commit"]) == 40)
    assert set(env["versions"]) >= {"torch", "transformers", "tokenizers", "apache_beam"}
    assert result["gemm_peak_tflops"] > 0 and set(result["settings"]) >= set(SIZES)
    expected = {"minilm": {"bertbeam", "sorted-loop", "tokenizer", "st-encode", "bertbeam@4cpu",
                           "sorted-loop@4cpu"},
                "bert-base": {"bertbeam", "sorted-loop"},
                "bert-base-long": {"bertbeam", "sorted-loop"}}
    assert {k: set(v["contenders"]) for k, v in result["suites"].items()} == expected
    for label, suite in result["suites"].items():
        for name, row in suite["contenders"].items():
            assert "error" not in row, (label, name, row.get("error"))
            assert set(row) >= GPU_ROW_KEYS, (label, name)
            assert row["steady_docs_per_second"] > 0 and row["steady_seconds"] <= row["seconds"]
            if name != "tokenizer":
                assert row["steady_mfu"] > 0 and row["startup_seconds"] > 0, (label, name)
    minilm, long = result["suites"]["minilm"], result["suites"]["bert-base-long"]
    usable = len(os.sched_getaffinity(0))
    assert [minilm["contenders"][n]["cores"] for n in ("bertbeam", "bertbeam@4cpu", "sorted-loop@4cpu")] \
        == [usable, min(4, usable), min(4, usable)]
    sizes = {name: smoke for name, (_, smoke) in SIZES.items()}
    st = minilm["contenders"]["st-encode"]
    assert (st["docs"], st["subset_of"]) == (sizes["st_docs"], sizes["minilm_docs"])
    assert long["windows"] > long["docs"] == sizes["long_docs"] == long["contenders"]["bertbeam"]["docs"]
    assert set(result["ratios"]["minilm"]) == {"bertbeam / sorted-loop", "bertbeam / tokenizer",
                                               "bertbeam / st-encode", "bertbeam@4cpu / sorted-loop@4cpu"}
    assert result["ratios"]["minilm"]["bertbeam / sorted-loop"]["steady"] == result["targets"][0]["value"]
    parity = result["parity"]["all"]
    assert parity["docs"] == sizes["parity_docs"] and parity["multi_window_docs"] >= 1
    assert parity["min_cosine"] >= 0.9999  # CPU float32 against itself, other batches
    assert [t["what"] for t in result["targets"][:len(TARGETS)]] == [t[0] for t in TARGETS]
    for target in result["targets"]:
        assert target["value"] is not None and target["verdict"] in ("met", "BELOW"), target
    return result


def test_cpu_figures_split_the_main_thread_from_the_rest_per_document():
    """benchmarks.feed's figures: medians of the repetitions, the main thread's CPU (and of it
    the model's forward, where measured) and the rest of the process's apart, per document,
    and documents per CPU-second."""
    runs = [{"docs": 1000, "seconds": 2.0, "process_seconds": 5.0, "exit_seconds": 0.5,
             "steady_seconds": 1.5, "steady_main_cpu": m, "steady_cpu": m + 0.1, "job_cpu": 2.0,
             "process_cpu": 4.0, "startup_seconds": 0.4} for m in (0.02, 0.03, 0.04)]
    runs.append({"error": "exit 1"})
    row = report.cpu_figures(runs, 1000)
    assert row["steady_main_us_per_doc"] == 30.0 and row["steady_native_us_per_doc"] == 100.0
    assert row["steady_cpu_us_per_doc"] == 130.0 and row["steady_docs_per_cpu_second"] == 7692.3
    assert row["process_docs_per_cpu_second"] == 250.0
    assert row["phases"]["imports"] == 2.5 and row["gpu_busy_fraction"] is None
    assert row["steady_model_main_us_per_doc"] is None  # not measured: not guessed
    for r, model in zip(runs, (0.005, 0.01, 0.03), strict=False):
        r["steady_model_main_cpu"] = model
    row = report.cpu_figures(runs, 1000)
    assert row["steady_model_main_us_per_doc"] == 10.0  # the model's share of the main thread
    assert row["steady_main_less_model_us_per_doc"] == 15.0  # median of 15, 20, 10


def test_a_window_reads_the_main_threads_cpu_clock_from_another_thread():
    import threading

    from benchmarks.contenders import Window

    window = Window()
    window.begin()
    end = __import__("time").process_time() + 0.2
    while __import__("time").process_time() < end:  # the main thread works
        pass
    marker = threading.Thread(target=window.mark)
    marker.start()
    marker.join()
    figures = window.figures()
    assert 0.15 < figures["steady_main_cpu"] <= figures["steady_cpu"] + 0.01
    assert figures["steady_seconds"] >= figures["steady_main_cpu"] - 0.01
