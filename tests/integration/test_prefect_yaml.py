"""prefect.yaml (the worker route) says the same as flows/deployments.py (the serve route):
same entrypoints, parameters the flows accept, the same schedules."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_matches_the_served_deployments():
    from flows.deployments import Schedules, build_deployments

    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    served = {(d.entrypoint.split(":")[-1] if d.entrypoint else None, d.name): d
              for d in build_deployments("elpv", "/data/raw/elpv", Schedules())}
    by_flow = {}
    for dep in doc["deployments"]:
        module, func = dep["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(dep["parameters"]) <= accepted, (dep["entrypoint"], set(dep["parameters"]) - accepted)
        assert dep["work_pool"]["name"] == "dlvm-process"
        by_flow[flow.name] = dep
    assert set(by_flow) == {"nightly", "pretrain", "feedback", "retrain", "predict"}
    schedules = Schedules()
    assert by_flow["nightly"]["schedules"][0]["cron"] == schedules.nightly
    assert by_flow["pretrain"]["schedules"][0]["cron"] == schedules.pretrain
    assert by_flow["feedback"]["schedules"][0]["interval"] == schedules.feedback_interval_s
    assert "schedules" not in by_flow["retrain"] and by_flow["retrain"]["name"] == "retrain"
    assert by_flow["predict"]["schedules"][0]["cron"] == schedules.predict
    assert {d.name for d in served.values()} == {"elpv", "retrain"}
    # Both routes run one flow run per deployment at a time.
    assert all(d.concurrency_limit == 1 for d in served.values())
    assert all(dep["concurrency_limit"] == 1 for dep in doc["deployments"])


def test_prefect_deploy_registers_them_in_the_process_pool(prefect_api, tmp_path):
    """`prefect deploy --all` (Prefect's own parser) accepts the file against a real server."""
    import os
    import subprocess
    import sys

    prefect = str(Path(sys.executable).with_name("prefect"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(tmp_path), DLVM_CODE_DIR=str(ROOT))

    def run(*args):
        proc = subprocess.run([prefect, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout

    run("work-pool", "create", "dlvm-process", "--type", "process", "--overwrite")
    run("--no-prompt", "deploy", "--all")
    listing = run("deployment", "ls")
    for name in ("nightly/elpv", "pretrain/elpv", "feedback/elpv", "retrain/retrain", "predict/elpv"):
        assert name in listing
