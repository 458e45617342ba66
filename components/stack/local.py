"""`dlvm stack up|status|down`: the service stack on loopback, for machines without Docker.

Starts a Prefect server (SQLite in the stack folder, or PostgreSQL with
``prefect_database_url``), an S3 server (``rclone serve s3``; MinIO in docker-compose.yml)
with the ``dlvm`` bucket, and Label Studio (components/stack/label_studio.sh), each detached in its
own process group, and writes ``stack.env``: the settings that point dlvm at them
(Prefect API, S3 artifact store, DVC's S3 remote, Prefect flow results in the bucket,
Label Studio). ``source`` it, or pass
it to ``docker``-less CI, and every flow runs against the services without code changes.

State lives in one folder (default ``$DLVM_HOME/stack``): ``<service>.pid`` (the process
group), logs, data, ``stack.env``. ``down`` stops the groups; data is kept for the next ``up``.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from components.stack import services

SERVICES = ("prefect", "s3", "label-studio")
BUCKET = "dlvm"


@dataclass
class StackConfig:
    root: Path
    prefect_port: int = 4200
    s3_port: int = 9000
    label_studio_port: int = 8080
    prefect_database_url: str | None = None
    label_studio: bool = True


def _pid_file(root: Path, name: str) -> Path:
    return root / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _running(root: Path, name: str) -> dict | None:
    path = _pid_file(root, name)
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    return info if _alive(info["pid"]) else None


def _s3_keys(root: Path) -> tuple[str, str]:
    """The stack's S3 credentials: generated once, kept (mode 600) with its data."""
    path = root / "s3" / "credentials.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"access_key": f"dlvm-{secrets.token_hex(6)}", "secret_key": secrets.token_urlsafe(24)}))
        path.chmod(0o600)
    keys = json.loads(path.read_text())
    return keys["access_key"], keys["secret_key"]


def up(cfg: StackConfig, progress=print) -> dict[str, str]:
    """Start what is not running; returns the environment of ``stack.env``."""
    root = cfg.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}

    prefect = _running(root, "prefect")
    if prefect is None:
        progress(f"starting Prefect server on 127.0.0.1:{cfg.prefect_port}"
                 + (" (PostgreSQL)" if cfg.prefect_database_url else " (SQLite)"))
        server = services.start_prefect_server(root / "prefect", cfg.prefect_port, cfg.prefect_database_url)
        prefect = {"pid": server.process.pid, "url": server.api_url}
        _pid_file(root, "prefect").write_text(json.dumps(prefect))
    env["PREFECT_API_URL"] = prefect["url"]

    access, secret = _s3_keys(root)
    s3 = _running(root, "s3")
    if s3 is None:
        progress(f"starting S3 server (rclone serve s3) on 127.0.0.1:{cfg.s3_port}")
        server = services.start_s3_server(root / "s3", access, secret, port=cfg.s3_port)
        if not server.client().bucket_exists(BUCKET):
            server.client().make_bucket(BUCKET)
        s3 = {"pid": server.process.pid, "url": server.endpoint}
        _pid_file(root, "s3").write_text(json.dumps(s3))
    env.update(DLVM_S3_ENDPOINT=s3["url"], DLVM_S3_ACCESS_KEY=access, DLVM_S3_SECRET_KEY=secret,
               DLVM_ARTIFACTS=f"s3://{BUCKET}/artifacts", DLVM_DVC_REMOTE=f"s3://{BUCKET}/dvc")
    env.update(result_storage_env(prefect["url"], s3["url"], BUCKET, access, secret))

    if cfg.label_studio:
        ls = _running(root, "label-studio")
        if ls is None:
            progress(f"starting Label Studio on 127.0.0.1:{cfg.label_studio_port} (first use installs it: ~1 min)")
            server = services.start_label_studio(root / "label-studio", document_root=root.parent,
                                                 port=cfg.label_studio_port)
            ls = {"pid": server.process.pid, "url": server.url, "token": server.token,
                  "files_root": str(server.document_root)}
            _pid_file(root, "label-studio").write_text(json.dumps(ls))
        env.update(DLVM_LABEL_STUDIO_URL=ls["url"], DLVM_LABEL_STUDIO_TOKEN=ls["token"],
                   DLVM_LABEL_STUDIO_FILES_ROOT=ls["files_root"])

    lines = [f"export {k}={v}" for k, v in env.items()]
    env_file = root / "stack.env"
    env_file.write_text("# written by `dlvm stack up`: source it to point dlvm at the stack\n" + "\n".join(lines) + "\n")
    env_file.chmod(0o600)
    return env


RESULT_STORAGE_BLOCK = "dlvm-results"


def save_result_storage(api_url: str, endpoint: str, bucket: str) -> str:
    """Save the Prefect block that keeps flow results in ``s3://bucket/prefect-results``
    (credentials come from AWS_* in the environment of the runs, never from the block)."""
    from prefect.filesystems import RemoteFileSystem
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        RemoteFileSystem(basepath=f"s3://{bucket}/prefect-results",
                         settings={"client_kwargs": {"endpoint_url": endpoint}}).save(RESULT_STORAGE_BLOCK, overwrite=True)
    return f"remote-file-system/{RESULT_STORAGE_BLOCK}"


def result_storage_env(api_url: str, endpoint: str, bucket: str, access: str, secret: str) -> dict[str, str]:
    """Settings that make every flow run persist its result in the bucket. Only flow
    results: dlvm's tasks opt out of caching, so their (large) results are never written."""
    return {"PREFECT_DEFAULT_RESULT_STORAGE_BLOCK": save_result_storage(api_url, endpoint, bucket),
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}


def status(root: Path) -> dict[str, dict]:
    """Per service: running (process group alive), healthy (answers), url."""
    out = {}
    for name in SERVICES:
        path = _pid_file(root, name)
        if not path.exists():
            out[name] = {"running": False, "healthy": False, "url": None}
            continue
        info = json.loads(path.read_text())
        running = _alive(info["pid"])
        health = {"prefect": "/health", "s3": "/", "label-studio": "/health"}[name]
        out[name] = {"running": running, "healthy": running and _answers(info["url"] + health), "url": info["url"]}
    return out


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500  # the S3 root answers 403 without credentials: it is up
    except OSError:
        return False


def down(root: Path, timeout_s: float = 20.0) -> list[str]:
    """Stop every running service of the stack (SIGTERM, then SIGKILL); returns what was stopped."""
    stopped = []
    for name in reversed(SERVICES):
        path = _pid_file(root, name)
        if not path.exists():
            continue
        pid = json.loads(path.read_text())["pid"]
        if _alive(pid):
            os.killpg(pid, signal.SIGINT if name == "prefect" else signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
            stopped.append(name)
        path.unlink()
    return stopped
