"""dlvm's deployments: `dlvm serve` registers them with their schedules, and a deployment
served with a short cron schedule produces a scheduled flow run that completes."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest
from sqlmodel import select

from clirun import DLVM, dlvm_env
from components.data.elpv import export_elpv
from components.registry.db import session_scope
from components.registry.tables import DatasetVersion
from components.settings import Settings


def test_build_deployments_schedules_and_parameters():
    from flows.deployments import Schedules, build_deployments

    deployments = {f"{d.flow_name}/{d.name}": d for d in build_deployments("cells", "/data/raw", Schedules())}
    assert set(deployments) == {"nightly/cells", "pretrain/cells", "feedback/cells", "retrain/retrain"}
    assert deployments["nightly/cells"].parameters == {"source": "/data/raw", "dataset": "cells"}
    crons = {name: [s.schedule.cron for s in d.schedules if hasattr(s.schedule, "cron")] for name, d in deployments.items()}
    assert crons["nightly/cells"] == ["0 2 * * *"] and crons["pretrain/cells"] == ["0 3 * * 0"]
    assert deployments["feedback/cells"].schedules[0].schedule.interval.total_seconds() == 3600
    assert not deployments["retrain/retrain"].schedules  # started by new labels, not by the clock
    bare = build_deployments("cells", None, Schedules(nightly=None, pretrain=None, feedback_interval_s=None), feedback=False)
    assert [f"{d.flow_name}/{d.name}" for d in bare] == ["pretrain/cells", "retrain/retrain"]
    assert not any(d.schedules for d in bare)


def test_served_cron_deployment_runs_on_schedule(tmp_path, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    images_dir, _ = export_elpv(tmp_path / "raw", limit=12, seed=2)
    home = tmp_path / "state"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([DLVM, "serve", "--dataset", "cells", "--source", str(images_dir), "--nightly", "* * * * *",
                             "--weekly-pretrain", "", "--feedback-interval", "0"],
                            env=dlvm_env(home, PREFECT_API_URL=prefect_api), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)

    async def completed_nightly_run():
        async with get_client() as client:
            deadline = time.monotonic() + 200  # the next whole minute, then the run itself
            while time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                found = await client.read_deployments(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["cells"])))
                nightly = [d for d in found if "nightly" in d.tags]
                if nightly:
                    runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                        deployment_id=FlowRunFilterDeploymentId(any_=[nightly[0].id])))
                    failed = [r for r in runs if r.state and r.state.is_failed()]
                    assert not failed, f"nightly run failed: {failed[0].state.message}"
                    done = [r for r in runs if r.state and r.state.is_completed()]
                    if done:
                        return nightly[0], done[0]
                await asyncio.sleep(2)
            raise AssertionError("no scheduled nightly run completed:\n" + (tmp_path / "serve.log").read_text()[-3000:])

    try:
        with temporary_settings({PREFECT_API_URL: prefect_api}):
            deployment, run = asyncio.run(completed_nightly_run())
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert run.auto_scheduled if hasattr(run, "auto_scheduled") else True
    assert run.parameters == {"source": str(images_dir.resolve()), "dataset": "cells"}
    # The run really ingested the folder: a dataset version in the registry.
    with session_scope(Settings(home=home)) as session:
        assert [v.n_images for v in session.exec(select(DatasetVersion)).all()] == [12]
    assert "no label sync" in (tmp_path / "serve.log").read_text()
