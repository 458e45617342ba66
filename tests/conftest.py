"""Shared fixtures: a fresh dlvm state directory per test, the loopback S3 server
(tests/s3server.py) and a throw-away PostgreSQL database."""
from __future__ import annotations

import os
import uuid

import pytest

from s3server import S3Server, s3_bucket, s3_server  # noqa: F401  (fixtures)

POSTGRES_ADMIN_URL = os.environ.get("DLVM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def dlvm_home(tmp_path, monkeypatch):
    """A settings environment of its own: embedded defaults under tmp_path/state."""
    from components.settings import get_settings, reset_settings

    home = tmp_path / "state"
    monkeypatch.setenv("DLVM_HOME", str(home))
    for var in ("DLVM_DATABASE_URL", "DLVM_ARTIFACTS", "DLVM_DVC_REMOTE", "DLVM_S3_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    reset_settings()
    yield get_settings()
    reset_settings()


@pytest.fixture(scope="session")
def postgres_database():
    """A fresh PostgreSQL database for this test session; yields its SQLAlchemy URL."""
    psycopg = pytest.importorskip("psycopg")
    name = f"dlvm_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    from components.registry.db import dispose_engines
    dispose_engines()
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real Prefect server on loopback for the session; yields its API URL. CLI tests
    point PREFECT_API_URL at it instead of paying Prefect's ephemeral start per command."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = tmp_path_factory.mktemp("prefect-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = open(home / "server.log", "w")
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"Prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    import signal
    os.killpg(server.pid, signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory):
    """A real Label Studio server on loopback, installed and started by infra/label_studio.sh
    (its own venv, first use about a minute), serving local files from anywhere under /."""
    from components.services import label_studio

    with label_studio(tmp_path_factory.mktemp("label-studio")) as server:
        yield server
