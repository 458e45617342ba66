"""`dlvm stack`: the loopback service stack, and dlvm running against it with settings only:
a Prefect server on PostgreSQL, the S3 artifact store and DVC's S3 remote on a real S3
server; a second, fresh state directory restores the dataset from the remote byte for byte."""
from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from clirun import dlvm, dlvm_env

from components.data.elpv import export_elpv
from components.stack.services import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


def _stack_env(stack_dir: Path) -> dict[str, str]:
    lines = (stack_dir / "stack.env").read_text().splitlines()
    return dict(line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export "))


@pytest.fixture
def stack(tmp_path, postgres_database):
    stack_dir = tmp_path / "stack"
    prefect_db = postgres_database.replace("postgresql+psycopg://", "postgresql+asyncpg://") + "_prefect"
    import psycopg
    admin = psycopg.connect(postgres_database.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
                            + "/postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{prefect_db.rsplit("/", 1)[1]}"')
    env = dlvm_env(tmp_path / "state")
    out = dlvm(env, "stack", "up", "--dir", str(stack_dir), "--prefect-port", str(free_port()),
               "--s3-port", str(free_port()), "--no-label-studio", "--prefect-database", prefect_db, timeout=300)
    try:
        yield stack_dir, env, out
    finally:
        dlvm(env, "stack", "down", "--dir", str(stack_dir), check=False)
        admin.execute(f'DROP DATABASE IF EXISTS "{prefect_db.rsplit("/", 1)[1]}" WITH (FORCE)')
        admin.close()


def test_stack_up_runs_dlvm_against_prefect_on_postgres_and_s3(stack, tmp_path, postgres_database):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack_dir, env, out = stack
    assert "source" in out.stdout and "stack.env" in out.stdout
    settings_env = _stack_env(stack_dir)
    assert settings_env["DLVM_ARTIFACTS"] == "s3://dlvm/artifacts" and settings_env["DLVM_DVC_REMOTE"] == "s3://dlvm/dvc"
    assert oct((stack_dir / "stack.env").stat().st_mode & 0o777) == "0o600"
    status = dlvm(env, "stack", "status", "--dir", str(stack_dir))
    assert "prefect" in status.stdout and "s3" in status.stdout and status.stdout.count(" up ") >= 2

    # The same CLI, pointed at the stack by settings only.
    images, _ = export_elpv(tmp_path / "raw", limit=12, seed=4)
    run_env = dict(env, **settings_env, DLVM_DATABASE_URL=postgres_database)
    summary = tmp_path / "ingest.json"
    dlvm(run_env, "ingest", str(images), "--dataset", "cells", "--summary", str(summary))
    version = json.loads(summary.read_text())["version"]
    s3_data = stack_dir / "s3" / "data" / "dlvm"
    assert any((s3_data / "artifacts").rglob("*")) and any((s3_data / "dvc").rglob("*"))
    # The flow's result is persisted in the bucket (the block holds no credentials).
    assert [p for p in (s3_data / "prefect-results").rglob("*") if p.is_file()]
    assert settings_env["PREFECT_DEFAULT_RESULT_STORAGE_BLOCK"] == "remote-file-system/dlvm-results"

    async def ingest_runs():
        async with get_client() as client:
            return [r for r in await client.read_flow_runs() if r.state and r.state.is_completed()]
    with temporary_settings({PREFECT_API_URL: settings_env["PREFECT_API_URL"]}):
        runs = asyncio.run(ingest_runs())
    assert runs, "the ingest flow run is recorded by the stack's Prefect server"

    # A fresh state directory (a new machine, a fresh clone) restores the images from the S3
    # remote through the registry's .dvc record, byte for byte.
    from components.data import access
    from components.registry import refs
    from components.registry.db import session_scope
    from components.settings import Settings

    fresh = Settings(home=tmp_path / "fresh", database_url=postgres_database, artifacts=settings_env["DLVM_ARTIFACTS"],
                     dvc_remote=settings_env["DLVM_DVC_REMOTE"], s3_endpoint=settings_env["DLVM_S3_ENDPOINT"],
                     s3_access_key=settings_env["DLVM_S3_ACCESS_KEY"], s3_secret_key=settings_env["DLVM_S3_SECRET_KEY"])
    with session_scope(fresh) as session:
        row = refs.resolve_dataset_version(session, "cells", version)
    access.dataset_images(fresh, "cells", row, 32, progress=False)
    restored = fresh.dvc_repo / access.dataset_rel_dir("cells")
    originals = sorted(images.glob("*.png"))
    assert len(originals) == 12
    for original in originals:
        copy = restored / original.name
        assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()


def test_stack_down_stops_everything(stack):
    stack_dir, env, _ = stack
    out = dlvm(env, "stack", "down", "--dir", str(stack_dir))
    assert "prefect" in out.stdout and "s3" in out.stdout
    status = dlvm(env, "stack", "status", "--dir", str(stack_dir), check=False)
    assert status.returncode == 1
    assert "stopped nothing" in dlvm(env, "stack", "down", "--dir", str(stack_dir)).stdout


def test_s3_stopped_mid_push_fails_clearly_registers_nothing_and_a_rerun_completes(tmp_path, prefect_api):
    """The S3 server dies while DVC pushes the images: the push is retried, the flow fails
    naming the remote, no dataset version is registered; with the server back, the same
    command completes and registers the version (test_stack_up_runs_dlvm_... restores a pushed version).

    What the test waits for is kept short, not skipped: the commands report to the session's
    Prefect server instead of starting an embedded one each (about 10 s apiece), the flow's
    three retries come 0.2 s apart instead of 1, 5 and 15 s (DLVM_IO_RETRY_DELAYS), and each
    S3 request is tried once (AWS_MAX_ATTEMPTS=1; dlvm's default 2 makes the first failed push
    back off per file, about 10 s for the 180 files left)."""
    import subprocess
    import time

    from clirun import DLVM
    from sqlmodel import select

    from components.registry.db import session_scope
    from components.registry.tables import DatasetVersion
    from components.settings import Settings
    from components.stack.services import start_s3_server, stop

    n_images = 200  # enough for a push that takes seconds; each one costs the two ingests time
    images, _ = export_elpv(tmp_path / "raw", limit=n_images, seed=6)
    port = free_port()
    s3_dir = tmp_path / "s3"
    server = start_s3_server(s3_dir, "stack-key", "stack-secret-0123456789", port=port)
    server.client().make_bucket("dlvm")
    env = dlvm_env(tmp_path / "state", DLVM_ARTIFACTS="s3://dlvm/artifacts", DLVM_DVC_REMOTE="s3://dlvm/dvc",
                   DLVM_S3_ENDPOINT=server.endpoint, DLVM_S3_ACCESS_KEY="stack-key",
                   DLVM_S3_SECRET_KEY="stack-secret-0123456789", DLVM_IO_RETRY_DELAYS="0.2,0.2,0.2",
                   PREFECT_API_URL=prefect_api, AWS_MAX_ATTEMPTS="1")
    proc = subprocess.Popen([DLVM, "ingest", str(images), "--dataset", "cells"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    pushed = s3_dir / "data" / "dlvm" / "dvc"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if pushed.exists() and sum(1 for p in pushed.rglob("*") if p.is_file()) >= 20:
            break
        time.sleep(0.05)
    n_pushed = sum(1 for p in pushed.rglob("*") if p.is_file())
    stop(server.process)  # in the middle of the push
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, output[-3000:]
    assert 20 <= n_pushed < n_images, f"the server was stopped after {n_pushed} objects, not mid-push"
    assert "Retry 3/3" in output, output[-3000:]  # the push task was retried
    error = output[output.index("error:"):]
    assert "dvc push" in error and "Could not connect to the endpoint URL" in error, error[-3000:]
    assert server.endpoint in error and "Traceback" not in error
    with session_scope(Settings(home=tmp_path / "state", artifacts="s3://dlvm/artifacts",
                                s3_endpoint=server.endpoint)) as session:
        assert session.exec(select(DatasetVersion)).all() == []

    restarted = start_s3_server(s3_dir, "stack-key", "stack-secret-0123456789", port=port)
    try:
        out = dlvm(env, "ingest", str(images), "--dataset", "cells", timeout=300)
        assert f"cells v1: {n_images} images" in out.stdout
    finally:
        stop(restarted.process)
