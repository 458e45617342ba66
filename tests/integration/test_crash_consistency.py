"""A registry row never points at a missing artifact: the process is SIGKILLed between the
artifact write and the registry commit (and in the middle of the artifact write), then the
registry is checked and the step is re-run."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from clirun import dlvm, dlvm_env, ingest_in_process
from sqlmodel import select

from components.data.elpv import elpv_root
from components.registry.db import session_scope
from components.registry.integrity import verify_registry
from components.registry.tables import DatasetVersion, ModelVersion, Run
from components.settings import Settings

# Runs one CLI command with a named function replaced by a SIGKILL of the whole process:
# the kill lands exactly at that point of the real code path.
KILL_AT = """
import os, signal, sys, importlib
module_name, attr = sys.argv[1].rsplit(".", 1)
module = importlib.import_module(module_name)
setattr(module, attr, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
from app.cli import app
app(sys.argv[2:])
"""


def run_killed_at(target: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    # Its own process group: the Prefect API server it started outlives the SIGKILL and
    # would hold the output pipes open, so the group is killed after the main process dies.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-c", KILL_AT, target, *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode = proc.wait(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.seek(0)
        return subprocess.CompletedProcess(proc.args, returncode, log.read(), "")


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((elpv_root() / "images").glob("*.png"))[:24]:
        shutil.copy(path, folder / path.name)
    return folder


def artifact_files(settings: Settings, kind: str) -> list[Path]:
    return [p for p in (settings.home / "artifacts" / kind).rglob("*") if p.is_file() and not p.name.endswith(".tmp")]


def test_kill_between_artifact_write_and_registry_commit(tmp_path, images, prefect_api):
    home = tmp_path / "state"
    env = dlvm_env(home, PREFECT_API_URL=prefect_api)
    settings = Settings(home=home)

    # 1. ingest: the manifest artifact is written, then the process dies before its row.
    proc = run_killed_at("components.registry.writes.add_dataset_version", env,
                         "ingest", str(images), "--dataset", "cells")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:]
    assert len(artifact_files(settings, "manifests")) == 1, "the artifact was fully written before the kill"
    with session_scope(settings) as session:
        assert session.exec(select(DatasetVersion)).all() == []
        assert [r.status for r in session.exec(select(Run)).all()] == ["running"]
    assert verify_registry(settings) == []
    dlvm(env, "ingest", str(images), "--dataset", "cells")  # the re-run completes
    with session_scope(settings) as session:
        assert [v.version for v in session.exec(select(DatasetVersion)).all()] == [1]

    # 2. pretrain: the checkpoint is written, then the process dies before the model version row.
    proc = run_killed_at("components.registry.writes.add_model_version", env,
                         "pretrain", "--dataset", "cells", "--recipe", "tiny", "--steps", "3")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:]
    assert len(artifact_files(settings, "checkpoints")) == 1
    with session_scope(settings) as session:
        assert session.exec(select(ModelVersion)).all() == []
    assert verify_registry(settings) == []
    assert "0 problems" in dlvm(env, "registry", "verify").stdout
    dlvm(env, "pretrain", "--dataset", "cells", "--recipe", "tiny", "--steps", "3")
    with session_scope(settings) as session:
        assert [v.version for v in session.exec(select(ModelVersion)).all()] == [1]
    assert verify_registry(settings) == []


def test_kill_in_the_middle_of_an_artifact_write(tmp_path, images, prefect_api):
    home = tmp_path / "state"
    env = dlvm_env(home, PREFECT_API_URL=prefect_api)
    settings = Settings(home=home)
    # os.link publishes the fully written temp file under its final name: die just before it.
    proc = run_killed_at("os.link", env, "ingest", str(images), "--dataset", "cells")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:]
    assert artifact_files(settings, "manifests") == [], "no half-written artifact under a final name"
    with session_scope(settings) as session:
        assert session.exec(select(DatasetVersion)).all() == []
    dlvm(env, "ingest", str(images), "--dataset", "cells")
    assert verify_registry(settings) == []
    with session_scope(settings) as session:
        assert len(session.exec(select(DatasetVersion)).all()) == 1


def test_verify_reports_a_tampered_artifact(tmp_path, images, prefect_api):
    home = tmp_path / "state"
    env = dlvm_env(home, PREFECT_API_URL=prefect_api)
    settings = Settings(home=home)
    ingest_in_process(env, images, "cells")  # the setup here, not the command under test
    manifest = artifact_files(settings, "manifests")[0]
    manifest.chmod(0o644)
    manifest.write_text("{}")
    out = dlvm(env, "registry", "verify", check=False)
    assert out.returncode == 1 and "dataset_version" in out.stdout and str(manifest.name) in out.stdout
