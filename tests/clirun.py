"""Run the real `dlvm` command line in a subprocess with its own state directory, or its flows in
this process with the same environment (steps a test is not about as a command line)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

DLVM = str(Path(sys.executable).with_name("dlvm"))


def dlvm_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLVM_", "PREFECT_"))}
    env.update(DLVM_HOME=str(home), **extra)
    return env


def dlvm(env: dict[str, str], *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([DLVM, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"dlvm {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


@contextlib.contextmanager
def dlvm_in_process(env: dict[str, str]):
    """The settings a `dlvm` command run with ``env`` sees, for calling its flows in this process:
    each command pays about 8-10 s of interpreter, torch and Prefect imports on 2 shared cores,
    a flow call in a warm process well under one. The DLVM_* variables and Prefect's API URL are
    restored afterwards (other test files share the worker process)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.registry.db import ensure_schema
    from components.settings import get_settings, reset_settings

    saved = {k: v for k, v in os.environ.items() if k.startswith("DLVM_")}

    def use(values: dict[str, str]) -> None:
        for k in [k for k in os.environ if k.startswith("DLVM_")]:
            del os.environ[k]
        os.environ.update(values)
        reset_settings()
    use({k: v for k, v in env.items() if k.startswith("DLVM_")})
    try:
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            ensure_schema(get_settings())  # what the command's prepare() does first
            yield get_settings()
    finally:
        use(saved)


def ingest_in_process(env: dict[str, str], images: Path, dataset: str, labels: Path | None = None,
                      classes: list[str] | None = None) -> None:
    """`dlvm ingest IMAGES` (then `dlvm labels LABELS`) as their flows in this process, for tests
    whose subject comes after the data steps (the commands themselves: test_cli_steps.py)."""
    from flows.ingest import ingest_flow
    from flows.labels import labels_flow

    with dlvm_in_process(env):
        ingest_flow(str(images), dataset)
        if labels is not None:
            labels_flow(str(labels), dataset, classes=classes)


async def read_deployment_runs(client, deployment_id) -> list:
    """Every flow run of one deployment, through an open Prefect client."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])))


def deployment_runs(api_url: str, deployment_id) -> list:
    """Every flow run of one deployment on the Prefect server at ``api_url``."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            return await read_deployment_runs(client, deployment_id)
    with temporary_settings({PREFECT_API_URL: api_url}):
        return asyncio.run(read())


def serve_until_a_run_completes(args: list[str], env: dict[str, str], log_path: Path, api_url: str,
                                watch, timeout_s: float = 240):
    """Run ``dlvm ARGS`` (a serving command) until a run of the deployment ``watch(deployments)``
    picks is completed; returns (that deployment, every deployment, the completed runs).
    A failed run or a dead server process fails at once, with the log's tail."""
    import asyncio
    import signal
    import time

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # The runner looks for due runs every 10 s by default (PREFECT_RUNNER_POLL_FREQUENCY); every
    # 2 s here, so the test waits for the schedule and the run, not for the next look.
    env = {"PREFECT_RUNNER_POLL_FREQUENCY": "2", **env}
    log = open(log_path, "w")
    proc = subprocess.Popen([DLVM, *args], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)

    async def poll():
        async with get_client() as client:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                deployments = await client.read_deployments()
                watched = watch(deployments)
                if watched is not None:
                    runs = await read_deployment_runs(client, watched.id)
                    failed = [r for r in runs if r.state and r.state.is_failed()]
                    assert not failed, f"{watched.name} run failed: {failed[0].state.message}"
                    done = [r for r in runs if r.state and r.state.is_completed()]
                    if done:
                        return watched, deployments, done
                await asyncio.sleep(2)
            raise AssertionError(f"no scheduled run completed in {timeout_s} s:\n" + log_path.read_text()[-3000:])

    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            return asyncio.run(poll())
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
