"""Read Prefect's record of flow runs (the embedded API by default, PREFECT_API_URL when set)."""
from __future__ import annotations

import asyncio

# Reading runs from a Prefect that is down must not hang a dashboard request.
READ_TIMEOUT_S = 30


async def _recent_flow_runs(limit: int) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=limit)
        flows = {f.id: f.name for f in await client.read_flows(limit=200)}
    return [{"id": str(r.id), "name": r.name, "flow": flows.get(r.flow_id, str(r.flow_id)),
             "state": r.state_name or "-", "start_time": r.start_time.isoformat(timespec="seconds") if r.start_time else "-"}
            for r in runs]


def recent_flow_runs(limit: int = 20) -> list[dict]:
    """The newest flow runs, newest first: id, name, flow name, state, start time."""
    return asyncio.run(asyncio.wait_for(_recent_flow_runs(limit), READ_TIMEOUT_S))


async def _mark_crashed(flow_run_ids: list[str], message: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    async with get_client() as client:
        for flow_run_id in flow_run_ids:
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and not run.state.is_final():
                await client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)


def mark_crashed(flow_run_ids: list[str], message: str) -> None:
    """Set Prefect's record of these flow runs (still 'Running' there after a kill) to Crashed."""
    if flow_run_ids:
        asyncio.run(asyncio.wait_for(_mark_crashed(flow_run_ids, message), READ_TIMEOUT_S))


def prefect_ui_url(settings) -> str | None:
    """Where the Prefect UI is: DLVM_PREFECT_UI_URL, else PREFECT_API_URL without its /api
    suffix; None for the embedded API, which serves no UI."""
    if settings.prefect_ui_url:
        return settings.prefect_ui_url.rstrip("/")
    from prefect.settings import PREFECT_API_URL

    api = (PREFECT_API_URL.value() or "").rstrip("/")
    return api.removesuffix("/api") if api else None
