"""dlvm's Prefect deployments: what runs when, with which parameters.

| deployment | schedule (default) | runs |
| --- | --- | --- |
| `nightly/<dataset>` | cron `0 2 * * *` | ingest the raw-image folder + Label Studio sync (flows/nightly.py) |
| `pretrain/<dataset>` | cron `0 3 * * 0` (Sundays) | self-supervised pretraining on the latest version |
| `feedback/<dataset>` | every hour | the labeling loop's round (flows/feedback.py) |
| `retrain/retrain` | none: started by N new labels | pull -> evaluate -> adapt -> promote (flows/retrain.py) |
| `predict/<dataset>` | cron `0 * * * *` (hourly), only with a predict folder | the production classifier on the folder, with drift monitoring (flows/predict.py) |

`dlvm serve` serves them all from one process (flow runs execute there); for workers,
prefect.yaml registers the same deployments in a work pool (see docs/DEPLOYMENTS.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from prefect.schedules import Cron, Interval

from flows.feedback import feedback_flow
from flows.nightly import nightly_flow
from flows.predict import predict_flow
from flows.pretrain import pretrain_flow
from flows.retrain import retrain_flow

# One run of a deployment at a time: a round that outlasts its interval (or a second
# labeling burst during a retrain) waits for the slot instead of running beside the first
# on the same workspace and Label Studio project.
ONE_AT_A_TIME = 1


@dataclass
class Schedules:
    nightly: str | None = "0 2 * * *"
    pretrain: str | None = "0 3 * * 0"
    feedback_interval_s: int | None = 3600
    predict: str | None = "0 * * * *"
    timezone: str = "UTC"


def build_deployments(dataset: str, source: str | None, schedules: Schedules = Schedules(),
                      recipe: str = "demo", retrain_name: str = "retrain", feedback: bool = True,
                      predict_source: str | None = None) -> list:
    """The RunnerDeployments for ``dataset`` (``nightly`` only with a ``source`` folder,
    ``feedback`` only when Label Studio is configured, ``predict`` only with a
    ``predict_source``); a schedule of None registers the deployment without one (runs on demand)."""
    def cron(expression: str | None) -> dict:
        return {"schedules": [Cron(expression, timezone=schedules.timezone)]} if expression else {}

    deployments = []
    if source:
        deployments.append(nightly_flow.to_deployment(name=dataset, parameters={"source": source, "dataset": dataset},
                                                      tags=["dlvm", "nightly"], concurrency_limit=ONE_AT_A_TIME,
                                                      **cron(schedules.nightly)))
    deployments.append(pretrain_flow.to_deployment(name=dataset, parameters={"dataset": dataset, "recipe": recipe},
                                                   tags=["dlvm", "pretrain"], concurrency_limit=ONE_AT_A_TIME,
                                                   **cron(schedules.pretrain)))
    loop = feedback_loop_deployments(dataset, schedules.feedback_interval_s, retrain_name, recipe)
    deployments += loop if feedback else loop[1:]  # retrain is also started by the webhook receiver
    if predict_source:
        deployments.append(predict_deployment(dataset, predict_source, schedules.predict, schedules.timezone))
    return deployments


def predict_deployment(dataset: str, source: str, cron: str | None = "0 * * * *", timezone: str = "UTC"):
    """``predict/<dataset>``: the dataset's production classifier on ``source`` (a folder the
    line fills, dataset:NAME or s3://bucket/prefix) every ``cron``, each run a registered,
    drift-checked prediction batch."""
    return predict_flow.to_deployment(
        name=dataset, parameters={"source": source, "model": f"{dataset}-classifier"}, tags=["dlvm", "predict"],
        concurrency_limit=ONE_AT_A_TIME,
        **({"schedules": [Cron(cron, timezone=timezone)]} if cron else {}))


def feedback_loop_deployments(dataset: str, interval_s: int | None, retrain_name: str = "retrain",
                              recipe: str = "demo", feedback_params: dict | None = None) -> list:
    """The labeling loop's two deployments: ``feedback/<dataset>`` every ``interval_s`` seconds
    (None: on demand) with ``feedback_params`` (feedback_flow's keyword arguments), and
    ``retrain/<retrain_name>``, which new labels start."""
    schedule = {"schedules": [Interval(interval_s)]} if interval_s else {}
    return [
        feedback_flow.to_deployment(name=dataset, parameters={**(feedback_params or {}), "dataset": dataset},
                                    tags=["dlvm", "feedback"], concurrency_limit=ONE_AT_A_TIME, **schedule),
        retrain_flow.to_deployment(name=retrain_name, parameters={"dataset": dataset, "recipe": recipe},
                                   tags=["dlvm", "retrain"], concurrency_limit=ONE_AT_A_TIME),
    ]
