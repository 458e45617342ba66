"""Smoke run of benchmarks/predict_api.py: a real `dlvm ui` answers predictions and the
benchmark writes its latency record."""
from __future__ import annotations

import json

from benchmarks.predict_api import CLASSES, main


def test_predict_api_benchmark_runs_and_records(tmp_path):
    out = tmp_path / "results.json"
    result = main(["--requests", "5", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["n"] == 5 and 0 < record["p50_ms"] <= record["p99_ms"] and record["first_ms"] > 0
    assert record["answer"]["class"] in CLASSES and record["answer"]["version"] == 1
    assert result["threads"]["server"] == "dlvm ui, 1 worker"
