"""Smoke test of benchmarks/registry_api.py: it fills a registry, serves it with `dlvm ui`
and loads every endpoint with wrk; every request must succeed and the numbers be parsed."""
from __future__ import annotations

import json

from benchmarks.registry_api import ENDPOINTS, main


def test_benchmark_loads_every_endpoint_without_errors(tmp_path):
    out = tmp_path / "results.json"
    rows = main(["--seconds", "1", "--workers", "1", "--connections", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == rows
    assert [r["endpoint"] for r in rows] == list(ENDPOINTS)
    for row in rows:
        assert row["rps"] > 50 and row["non_2xx"] == 0 and row["socket_errors"] is None, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["uncached_query_ms"] > 0
