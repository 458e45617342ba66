"""Local service processes for development, tests and benchmarks (no Docker needed).

:func:`label_studio` starts Label Studio through ``infra/label_studio.sh`` (its own venv,
installed on first use) on a free loopback port with a known admin token, waits for
``/health`` and stops it (the whole process group) on exit."""
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
    token = ""
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=3):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Label Studio did not start on {url}; last lines of {log_path}:\n"
                                       + log_path.read_text()[-3000:]) from None
                time.sleep(1)
        credentials = dict(line.split("=", 1) for line in (data_dir / "credentials.env").read_text().split())
        token = credentials["LABEL_STUDIO_USER_TOKEN"]
        yield LabelStudioServer(url, token, data_dir, Path(document_root).resolve(), process)
    finally:
        stop(process)


def stop(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
