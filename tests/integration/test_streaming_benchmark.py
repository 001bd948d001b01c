"""The streaming latency benchmark end to end at a tiny size: the command fed at a fixed
rate, stopped with SIGINT, every landed document found in the results with its latency (a
smoke run: no latency thresholds, which are for people to read)."""

from __future__ import annotations

import json

from benchmarks.streaming import main


def test_smoke_run_accounts_for_every_document(tiny_model, tmp_path):
    code = main(["--rates", "10", "--seconds", "3", "--model", tiny_model("bert", "base"),
                 "--watch-interval", "0.3", "--window-seconds", "5", "--out", str(tmp_path),
                 "--name", "smoke"])
    assert code == 0
    run = json.loads((tmp_path / "smoke.json").read_text())["runs"][0]
    assert run["documents"] == 30 and run["written"] == 30 and run["missing"] == 0
    assert run["command_summary"]["accounted"] is True
    assert 0 < run["latency_seconds"]["p50"] <= run["latency_seconds"]["p99"]
    assert run["sustained_docs_per_second"] > 0 and run["model_alone_docs_per_second"] > 0
