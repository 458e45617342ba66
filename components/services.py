"""Local service processes for development, tests and benchmarks (no Docker needed).

:func:`label_studio` starts Label Studio through ``infra/label_studio.sh`` (its own venv,
installed on first use) on a free loopback port with a known admin token;
:func:`prefect_server` a Prefect server. Both wait for their health endpoint and stop the
whole process group on exit."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

INFRA = Path(__file__).resolve().parent.parent / "infra"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabelStudioServer:
    url: str
    token: str
    data_dir: Path
    document_root: Path
    process: subprocess.Popen


@contextmanager
def label_studio(data_dir: Path, document_root: Path = Path("/"), port: int | None = None,
                 start_timeout_s: float = 240.0) -> Iterator[LabelStudioServer]:
    """A Label Studio server serving local files under ``document_root``; yields its URL and token."""
    port = port or free_port()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # No LABEL_STUDIO_* credentials given: the script generates them once into
    # DATA_DIR/credentials.env (Label Studio sets the admin token only when it creates the
    # admin, so a restarted data dir must keep its first token).
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env.update(LABEL_STUDIO_DATA_DIR=str(data_dir), LABEL_STUDIO_PORT=str(port),
               LOCAL_FILES_DOCUMENT_ROOT=str(Path(document_root).resolve()))
    # Install (first use only) before the clock starts: it takes about a minute.
    subprocess.run([str(INFRA / "label_studio.sh"), "install"], env=env, check=True, stdin=subprocess.DEVNULL)
    log_path = data_dir / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([str(INFRA / "label_studio.sh"), "start"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", process, log_path, start_timeout_s, "Label Studio")
        credentials = dict(line.split("=", 1) for line in (data_dir / "credentials.env").read_text().split())
        yield LabelStudioServer(url, credentials["LABEL_STUDIO_USER_TOKEN"], data_dir,
                                Path(document_root).resolve(), process)
    finally:
        stop(process)


@contextmanager
def prefect_server(home: Path, port: int | None = None, start_timeout_s: float = 90.0) -> Iterator[str]:
    """A Prefect server (SQLite in ``home``) on a free loopback port; yields its API URL."""
    import sys

    port = port or free_port()
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log_path = home / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start",
                                    "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for_http(f"{url}/health", process, log_path, start_timeout_s, "Prefect server")
        yield url
    finally:
        stop(process, signal.SIGINT)


def wait_for_http(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float, what: str) -> None:
    """Poll ``url`` until it answers; fail with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                raise RuntimeError(f"{what} did not start ({url}); last lines of {log_path}:\n"
                                   + log_path.read_text()[-3000:]) from None
            time.sleep(0.5)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
    """Stop a service started in its own session (its whole process group); SIGKILL after ``timeout_s``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
