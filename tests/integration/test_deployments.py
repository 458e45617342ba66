"""dlvm's deployments: `dlvm serve` registers them with their schedules, and a deployment
served with a short cron schedule produces a scheduled flow run that completes."""
from __future__ import annotations

from clirun import dlvm_env, serve_until_a_run_completes
from sqlmodel import select

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
    with_predict = {f"{d.flow_name}/{d.name}": d for d in build_deployments("cells", None, Schedules(),
                                                                           predict_source="/line/inbox")}
    assert with_predict["predict/cells"].parameters == {"source": "/line/inbox", "model": "cells-classifier"}
    assert [s.schedule.cron for s in with_predict["predict/cells"].schedules] == ["0 * * * *"]


def test_feedback_serve_and_dlvm_serve_build_the_same_loop():
    """`dlvm feedback serve` serves feedback_loop_deployments with the CLI's feedback options;
    `dlvm serve` the same two deployments inside build_deployments."""
    from flows.deployments import (
        Schedules,
        build_deployments,
        feedback_loop_deployments,
    )

    feedback, retrain = feedback_loop_deployments("cells", 60, "on-labels", "demo",
                                                  {"queue_size": 7, "dataset": "ignored", "classes": ["a", "b"]})
    assert (feedback.flow_name, feedback.name, retrain.flow_name, retrain.name) == ("feedback", "cells", "retrain", "on-labels")
    assert feedback.parameters == {"queue_size": 7, "dataset": "cells", "classes": ["a", "b"]}
    assert feedback.schedules[0].schedule.interval.total_seconds() == 60
    assert retrain.parameters == {"dataset": "cells", "recipe": "demo"} and not retrain.schedules
    assert feedback.concurrency_limit == retrain.concurrency_limit == 1
    served = {f"{d.flow_name}/{d.name}": d for d in build_deployments("cells", None, Schedules(feedback_interval_s=60),
                                                                     retrain_name="on-labels")}
    assert served["feedback/cells"].parameters == {"dataset": "cells"}
    assert served["retrain/on-labels"].parameters == retrain.parameters
    assert not feedback_loop_deployments("cells", None)[0].schedules  # on demand only


def test_served_cron_deployment_runs_on_schedule(tmp_path, prefect_api):
    images_dir, _ = export_elpv(tmp_path / "raw", limit=12, seed=2)
    home = tmp_path / "state"
    _, _, done = serve_until_a_run_completes(
        ["serve", "--dataset", "cells", "--source", str(images_dir), "--nightly", "* * * * *",
         "--weekly-pretrain", "", "--feedback-interval", "0"], dlvm_env(home, PREFECT_API_URL=prefect_api),
        tmp_path / "serve.log", prefect_api,
        watch=lambda ds: next((d for d in ds if d.name == "cells" and "nightly" in d.tags), None), timeout_s=200)
    run = done[0]
    assert run.auto_scheduled  # created by the cron schedule, not by hand
    assert run.parameters == {"source": str(images_dir.resolve()), "dataset": "cells"}
    # The run really ingested the folder: a dataset version in the registry.
    with session_scope(Settings(home=home)) as session:
        assert [v.n_images for v in session.exec(select(DatasetVersion)).all()] == [12]
    assert "no label sync" in (tmp_path / "serve.log").read_text()
