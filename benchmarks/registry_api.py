"""Registry reads through `dlvm ui`: requests/s and latency percentiles under load.

    .venv/bin/python -m benchmarks.registry_api                   # the docs/BENCHMARKS.md run
    .venv/bin/python -m benchmarks.registry_api --seconds 5       # a quick look

Fills a fresh SQLite registry (the embedded default) with a realistic history
(``fill_registry``: 2 datasets, 3 classifiers x 6 versions with lineage, evaluations with
their real plots, promotions, runs), starts ``dlvm ui`` with 1 and with 2 worker processes,
and drives each read endpoint with ``wrk`` (Debian's package: ``apt-get install wrk``;
keep-alive connections, latency percentiles measured by wrk). wrk shares the 2 cores
with the server, as a client on the same host would.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from components.registry import views, writes
from components.registry.db import session_scope
from components.registry.promotion import designate_baseline, record_promotion
from components.registry.tables import Run, utcnow
from components.settings import Settings
from components.storage import open_store

ROOT = Path(__file__).resolve().parents[1]

ENDPOINTS = ("/api/models", "/api/models/elpv-classifier", "/api/models/elpv-classifier/versions/6/lineage",
             "/api/promotions?limit=20", "/api/alerts")
CLASSES = ["functional", "mild", "moderate", "defective"]


def _sweep_rows(seed_offset: float) -> list[dict]:
    """Label-efficiency rows shaped like the evaluate flow's (values made up, plausibly shaped)."""
    rows = []
    for backbone, base in (("elpv-mae:1", 0.62), ("generic-mae:1", 0.58), ("scratch", 0.52)):
        for fraction in (0.05, 0.1, 0.25, 0.5, 1.0):
            for seed in (0, 1, 2):
                value = base + 0.08 * fraction + 0.004 * seed + seed_offset
                rows.append({"backbone": backbone, "method": "probe", "fraction": fraction, "seed": seed,
                             "n_train": int(1968 * fraction),
                             "metrics": {"accuracy": {"value": value, "ci_low": value - 0.03, "ci_high": value + 0.03}}})
    return rows


def fill_registry(settings: Settings, n_classifiers: int = 3, n_versions: int = 6) -> dict:
    """A registry with the shape of a few months of use; returns what it made.

    Classifier ``elpv-classifier`` v1..vN: every version promoted to production except
    v(N-1), rejected, and v1 also staged; one failed run; the evaluation plots and reports
    are real files in the artifact store. Other classifiers: ``elpv-classifier-k``.
    """
    from components.evaluation.report import plot_curves, summary_table

    store = open_store(settings)
    made: dict = {"models": [], "evaluations": []}
    with session_scope(settings) as s:
        versions = []
        for name, n_images in (("elpv", 2624), ("generic", 400)):
            ds = writes.get_or_create_dataset(s, name)
            for v in (1, 2):
                versions.append(writes.add_dataset_version(
                    s, ds.id, content_hash=f"{name}-content-{v}", manifest_uri=f"file:///m/{name}/{v}.json",
                    manifest_sha256="0" * 64, dvc_md5=f"{v:032d}.dir", dvc_file="outs:\n- md5: x\n",
                    n_images=n_images * v, n_bytes=n_images * v * 90_000, source_path=f"/data/{name}"))
        elpv_v1 = versions[0]
        snapshot = writes.add_label_snapshot(
            s, elpv_v1.id, content_hash="labels-1", classes=CLASSES, n_labeled=2624, source="elpv labels",
            artifact_uri="file:///l/1.json", sha256="1" * 64)
        writes.get_or_create_model(s, "generic-mae", "backbone")
        generic = writes.add_model_version(s, "generic-mae", dataset_version_id=versions[2].id,
                                            artifact_uri="file:///b/g1", sha256="2" * 64,
                                            params={"recipe": "demo"})
        designate_baseline(s, generic.id, actor="bench")
        writes.get_or_create_model(s, "elpv-mae", "backbone")
        backbone = writes.add_model_version(s, "elpv-mae", dataset_version_id=elpv_v1.id,
                                             parent_id=generic.id, artifact_uri="file:///b/e1", sha256="3" * 64,
                                             params={"recipe": "demo", "steps": 1000})
        evaluation_ids = []
        for i in range(2):
            rows = _sweep_rows(0.01 * i)
            plot = store.put_bytes(plot_curves(rows, "accuracy"), "reports", "elpv-label-efficiency.png")
            report = store.put_bytes(b"# Label efficiency on elpv\n", "reports", "elpv-evaluation.md")
            evaluation = writes.add_evaluation(
                s, label_snapshot_id=snapshot.id, report_uri=report.uri, report_sha256=report.sha256,
                plot_uri=plot.uri, plot_sha256=plot.sha256, results=rows,
                summary={"domain": "elpv-mae:1", "table": summary_table(rows), "reference": "generic-mae:1",
                         "label_efficiency": {"elpv-mae:1": 0.5, "scratch": None}})
            evaluation_ids.append(evaluation.id)
        made["evaluations"] = evaluation_ids
        for k in range(n_classifiers):
            name = "elpv-classifier" if k == 0 else f"elpv-classifier-{k}"
            writes.get_or_create_model(s, name, "classifier", description="ELPV 4-class defect grade")
            for v in range(1, n_versions + 1):
                accuracy = 0.66 + 0.01 * v
                mv = writes.add_model_version(
                    s, name, dataset_version_id=elpv_v1.id, label_snapshot_id=snapshot.id, parent_id=backbone.id,
                    artifact_uri=f"file:///c/{name}/{v}", sha256=f"{v:064d}", params={"method": "probe"},
                    metrics={"accuracy": {"value": accuracy, "ci_low": accuracy - 0.035, "ci_high": accuracy + 0.035}})
                decision = "rejected" if v == n_versions - 1 else "promoted"
                record_promotion(s, model_name=name, alias="production", decision=decision,
                                 candidate_version_id=mv.id, evaluation_id=evaluation_ids[-1],
                                 evidence={"gate": {"passed": decision == "promoted", "margin": 0.0}},
                                 actor="pipeline", reason=f"bench history v{v}")
                if v == 1:
                    record_promotion(s, model_name=name, alias="staging", decision="promoted",
                                     candidate_version_id=mv.id, evidence={"manual": True}, actor="bench")
            made["models"].append(name)
        s.add(Run(kind="pretrain", status="failed", error="CUDA out of memory\ntraceback...",
                  started_at=utcnow() - timedelta(hours=3), finished_at=utcnow() - timedelta(hours=2)))
        s.add(Run(kind="ingest", status="completed", finished_at=utcnow()))
    return made


def _wrk(url: str, seconds: int, connections: int, threads: int) -> dict:
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": ms("50"), "p90_ms": ms("90"), "p99_ms": ms("99"),
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else None}


def query_costs(settings: Settings, repeats: int = 200) -> dict[str, float]:
    """Milliseconds per call of the queries behind ENDPOINTS, uncached, in this process:
    what a request costs when the registry changed since the last one (a cache miss)."""
    from components.registry import monitoring
    from components.registry.db import read_session

    calls = {"/api/models": (views.list_models,), "/api/models/elpv-classifier": (views.model_detail, "elpv-classifier"),
             ENDPOINTS[2]: (monitoring.lineage, "elpv-classifier", 6),
             ENDPOINTS[3]: (monitoring.recent_promotions, 20), ENDPOINTS[4]: (monitoring.alerts,)}
    costs = {}
    for endpoint, (query, *args) in calls.items():
        with read_session(settings) as session:
            query(session, *args)
            start = time.perf_counter()
            for _ in range(repeats):
                query(session, *args)
            costs[endpoint] = (time.perf_counter() - start) / repeats * 1000
    return costs


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="load per endpoint and worker count")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="comma-separated server process counts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/registry-api/results.json")
    args = parser.parse_args(argv)
    from components.stack.services import ui_server

    results = []
    with tempfile.TemporaryDirectory(prefix="dlvm-api-bench-") as tmp:
        env = {**os.environ, "DLVM_HOME": str(Path(tmp) / "state")}
        for var in ("DLVM_DATABASE_URL", "DLVM_ARTIFACTS", "DLVM_API_READ_TOKEN"):
            env.pop(var, None)
        settings = Settings(home=Path(tmp) / "state")
        print("filling the registry:", fill_registry(settings))
        costs = query_costs(settings)
        print("uncached query cost (ms):", json.dumps({k: round(v, 2) for k, v in costs.items()}))
        for workers in [int(w) for w in args.workers.split(",")]:
            with ui_server(env, Path(tmp) / f"ui-{workers}.log", workers=workers) as server:
                for endpoint in ENDPOINTS:
                    _wrk(server.url + endpoint, 2, args.connections, 2)  # warm-up
                    row = {"workers": workers, "endpoint": endpoint, "connections": args.connections,
                           "uncached_query_ms": round(costs[endpoint], 2),
                           **_wrk(server.url + endpoint, args.seconds, args.connections, 2)}
                    print(json.dumps(row))
                    results.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'workers':>7} {'endpoint':<48} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7}")
    for r in results:
        print(f"{r['workers']:>7} {r['endpoint']:<48} {r['rps']:>8.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
              f"{r['non_2xx']:>7}")
    return results


if __name__ == "__main__":
    main()
