"""Starting Prefect deployments from outside a flow: what a label webhook or the feedback
round calls when enough new labels arrived."""
from __future__ import annotations

from collections.abc import Callable


def start_deployment(name: str, parameters: dict, api_url: str | None = None) -> Callable[[], str]:
    """A ``start`` for :class:`RetrainTrigger`: create a run of Prefect deployment ``name``
    (on ``api_url``, default PREFECT_API_URL)."""
    def start() -> str:
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api_url} if api_url else {}):
            run = run_deployment(name=name, parameters=parameters, timeout=0, tags=["dlvm", "label-trigger"])
        return str(run.id)
    return start
