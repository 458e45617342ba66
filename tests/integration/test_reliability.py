"""What a hostile tester broke (issue 16), kept as regression tests: a dataset name that
deleted the state directory, a file rewritten during ingest versioned with the wrong hash,
concurrent promotions that skipped the holder comparison. Each runs on SQLite and on a
real PostgreSQL, through the real command line (and the API for promotions)."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from clirun import DLVM, dlvm, dlvm_env
from promotable import DATASET, MODEL, promotable_registry, raw_images
from sqlmodel import SQLModel, col, select

from components.registry import db
from components.registry.db import session_scope
from components.registry.tables import (
    Alias,
    Dataset,
    DatasetVersion,
    LabelSnapshot,
    ModelVersion,
    PromotionEvent,
)
from components.settings import Settings

TOKEN = "reliability-write-token"

# Runs one CLI command with a named function wrapped by code given on the command line:
# the interference lands exactly at that point of the real code path.
WRAPPED = """
import importlib, sys
module_name, attr = sys.argv[1].rsplit(".", 1)
module = importlib.import_module(module_name)
original = getattr(module, attr)
namespace = {"original": original}
exec(sys.argv[2], namespace)
setattr(module, attr, namespace["wrapper"])
from app.cli import app
app(sys.argv[3:], prog_name="dlvm")
"""


def run_wrapped(env: dict, target: str, wrapper_code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRAPPED, target, wrapper_code, *args], env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


# The probes that lost or misrecorded data (issue 16 items 1-3) and the concurrency check run
# on both registry backends; the others on SQLite (each run builds a registry: ~20 s).
BOTH_BACKENDS = pytest.mark.parametrize(
    "state", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


@pytest.fixture
def state(request, tmp_path, prefect_api):
    """A state directory holding a registered, promotable model (tests/promotable.py), on
    SQLite or (``BOTH_BACKENDS``) on each registry backend; returns (settings, CLI
    environment). Commands use the session's Prefect server (the ephemeral one takes most of
    a command's time)."""
    url = ""
    if getattr(request, "param", "sqlite") == "postgres":
        url = request.getfixturevalue("postgres_database")
        db.upgrade(url)
        with db.engine_for(url).begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {', '.join(SQLModel.metadata.tables)} RESTART IDENTITY CASCADE")
    settings = Settings(home=tmp_path / "state", database_url=url, api_token=TOKEN)
    promotable_registry(settings, tmp_path / "raw")
    (settings.home / "notes-of-the-user.txt").write_text("not dlvm's\n")
    env = dlvm_env(settings.home, DLVM_DATABASE_URL=settings.database_url, DLVM_API_TOKEN=TOKEN,
                   PREFECT_API_URL=prefect_api, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    return settings, env


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (the registry database too, on SQLite)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(("-wal", "-shm")) and "prefect" not in path.parts:
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def registry_rows(settings: Settings) -> dict[str, int]:
    with session_scope(settings) as s:
        return {table.__tablename__: len(s.exec(select(table)).all())
                for table in (Dataset, DatasetVersion, ModelVersion, PromotionEvent, Alias)}


def verify_deep(env: dict) -> str:
    out = dlvm(env, "registry", "verify", "--deep").stdout
    assert out.strip().endswith("0 problems"), out
    return out


# --- 1. a name never reaches a path ----------------------------------------------------


@BOTH_BACKENDS
def test_a_hostile_dataset_name_is_refused_before_anything_is_touched(state, tmp_path):
    """Probe 1: `dlvm ingest DIR --dataset ../..` deleted everything under DLVM_HOME; `a/b`
    pushed to DVC and left an empty dataset row."""
    settings, env = state
    raw = raw_images(tmp_path / "more", n=6)
    before, rows = tree(settings.home), registry_rows(settings)
    for name in ("../..", "..", "a/b", "/tmp", "x/../../..", ".", "a\\b"):
        proc = dlvm(env, "ingest", str(raw), "--dataset", name, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "invalid dataset name" in proc.stderr and "Traceback" not in proc.stderr
    assert tree(settings.home) == before
    assert registry_rows(settings) == rows
    verify_deep(env)


def test_every_flow_checks_its_names_before_it_records_a_run(state):
    """The flows are entries too (deployments, the API, other flows call them directly)."""
    from components.names import InvalidName
    from flows.adapt import adapt_flow
    from flows.evaluate import evaluate_flow
    from flows.feedback import feedback_flow
    from flows.import_backbone import import_backbone_flow
    from flows.ingest import ingest_flow
    from flows.labels import labels_flow
    from flows.nightly import nightly_flow
    from flows.pipeline import pipeline_flow
    from flows.pretrain import pretrain_flow
    from flows.promote import promote_flow
    from flows.retrain import retrain_flow

    settings, _ = state
    before, rows = tree(settings.home), registry_rows(settings)
    calls = [
        lambda n: ingest_flow.fn("/nonexistent", n), lambda n: labels_flow.fn("/nonexistent", n),
        lambda n: pretrain_flow.fn(n), lambda n: pretrain_flow.fn(DATASET, model_name=n),
        lambda n: adapt_flow.fn(n), lambda n: adapt_flow.fn(DATASET, backbone=n), lambda n: evaluate_flow.fn(n),
        lambda n: evaluate_flow.fn(DATASET, backbones=[n]), lambda n: feedback_flow.fn(n),
        lambda n: feedback_flow.fn(DATASET, alias=n), lambda n: import_backbone_flow.fn("/nonexistent", n),
        lambda n: nightly_flow.fn("/nonexistent", n), lambda n: pipeline_flow.fn("/x", n, "/y"),
        lambda n: promote_flow.fn(n), lambda n: promote_flow.fn(f"{MODEL}:1", alias=n), lambda n: retrain_flow.fn(n),
    ]
    for call in calls:
        for name in ("../..", "a/b", "\0", "x" * 200):
            with pytest.raises(InvalidName):
                call(name)
    assert tree(settings.home) == before and registry_rows(settings) == rows


# --- 2. the bytes versioned are the bytes hashed ----------------------------------------


@BOTH_BACKENDS
def test_a_file_rewritten_during_ingest_is_refused_not_misrecorded(state, tmp_path):
    """Probe 2: a file rewritten between the scan (which hashed it) and the staging (which
    copied it) was registered with the old sha256 and the new bytes."""
    settings, env = state
    raw = raw_images(tmp_path / "changing", n=8)
    victim = sorted(raw.glob("*.png"))[3]
    rewrite = (f"def wrapper(*a, **k):\n"
               f"    from PIL import Image\n"
               f"    Image.new('L', (32, 32), 77).save({str(victim)!r})\n"
               f"    return original(*a, **k)\n")
    rows = registry_rows(settings)
    proc = run_wrapped(env, "flows.ingest.stage_into_workspace", rewrite, "ingest", str(raw), "--dataset", "changing")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{victim.name} changed after it was validated" in proc.stdout
    assert registry_rows(settings) == rows  # no dataset, no version: nothing misrecorded
    # Ingested again once the folder is quiet, the version is right, and the deep check agrees.
    assert "new version" in dlvm(env, "ingest", str(raw), "--dataset", "changing").stdout
    verify_deep(env)


@BOTH_BACKENDS
def test_deep_verify_finds_dvc_data_that_differs_from_its_manifest(state):
    settings, env = state
    remote = Path(settings.dvc_remote)
    blob = next(p for p in sorted(remote.rglob("*")) if p.is_file() and not p.name.endswith(".dir"))
    blob.chmod(0o644)
    blob.write_bytes(b"not the bytes that were hashed")
    proc = dlvm(env, "registry", "verify", "--deep", check=False)
    assert proc.returncode == 1 and "DVC holds sha256" in proc.stdout and "1 problems" in proc.stdout


# --- 3. every promotion is compared with the holder it replaces -------------------------


def check_promotion_history(settings: Settings) -> list[PromotionEvent]:
    """Every event's evidence names the holder it was gated against, that holder is the one
    the event replaced (and was among the gate's comparisons), and the moves form one chain."""
    with session_scope(settings) as s:
        events = s.exec(select(PromotionEvent).order_by(col(PromotionEvent.id))).all()
        versions = {v.id: v.version for v in s.exec(select(ModelVersion)).all()}
        holder = s.exec(select(Alias).where(Alias.name == "production")).all()
    assert len(holder) == 1
    current = None
    for event in events:
        assert event.previous_version_id == current, f"event {event.id} replaced another holder than the last move"
        compared = event.evidence["holder"]
        assert (compared["version_id"] if compared else None) == event.previous_version_id
        if event.previous_version_id is not None:
            assert f"holder: production v{versions[event.previous_version_id]}" in event.evidence["gate"]["comparisons"]
        if event.decision == "promoted":
            current = event.new_version_id
    assert holder[0].model_version_id == current
    return events


@BOTH_BACKENDS
def test_a_promotion_that_lost_a_race_is_gated_again_against_the_winner(state):
    """Probe 3, made deterministic: while `dlvm promote v2` gates, another promotion moves
    the alias to v1; v2's decision must be recorded against v1, never against no holder."""
    settings, env = state
    sneak = ("done = []\n"
             "def wrapper(*a, **k):\n"
             "    result = original(*a, **k)\n"
             "    if not done:\n"
             "        done.append(1)\n"
             "        from components.registry.db import session_scope\n"
             "        from components.registry.promotion import record_promotion\n"
             "        from components.registry.queries import get_model_version\n"
             "        with session_scope() as s:\n"
             f"            v1 = get_model_version(s, {MODEL!r}, 1)\n"
             f"            record_promotion(s, model_name={MODEL!r}, alias='production', decision='promoted',\n"
             "                candidate_version_id=v1.id, evidence={'holder': None, 'gate': {'comparisons': {}}},\n"
             "                actor='the other promotion')\n"
             "    return result\n")
    proc = run_wrapped(env, "flows.promote.promotion_gate", sneak, "promote", f"{MODEL}:2", "--margin", "-1",
                       "--reason", "race probe")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "moved while the candidate was gated" in proc.stdout + proc.stderr  # the flow's log
    events = check_promotion_history(settings)
    assert [e.actor for e in events][:1] == ["the other promotion"] and len(events) == 2
    assert events[-1].reason == "race probe" and events[-1].decision == "promoted"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@BOTH_BACKENDS
def test_concurrent_promotions_through_the_cli_and_the_api_each_replace_the_holder_they_beat(state):
    """N promotions at once, two through `dlvm promote`, two through the API of `dlvm ui`:
    one holder at the end, and every event compared with the holder it replaced."""
    settings, env = state
    port = _free_port()
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen([DLVM, "ui", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                    break
                except OSError:
                    assert server.poll() is None and time.monotonic() < deadline, log.seek(0) or log.read()
                    time.sleep(0.5)
            cli = [subprocess.Popen([DLVM, "promote", f"{MODEL}:{v}", "--margin", "-1", "--reason", f"cli v{v}"],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    stdin=subprocess.DEVNULL) for v in (1, 2)]
            answers: dict[int, tuple[int, dict]] = {}
            threads = [threading.Thread(target=lambda v=v: answers.__setitem__(v, _post(
                f"http://127.0.0.1:{port}/api/models/{MODEL}/promote",
                {"version": v, "margin": -1, "reason": f"api v{v}"}))) for v in (3, 4)]
            for t in threads:
                t.start()
            outputs = [p.communicate(timeout=600)[0] for p in cli]
            for t in threads:
                t.join(600)
        finally:
            server.terminate()
            server.wait(30)
    for proc, out in zip(cli, outputs):
        assert proc.returncode == 0, out[-3000:]
    for v, (status, body) in answers.items():
        assert status == 200, (v, body)
    events = check_promotion_history(settings)
    assert sorted(e.reason for e in events) == ["api v3", "api v4", "cli v1", "cli v2"]
    assert all(e.decision == "promoted" for e in events)  # margin -1: each beats whoever held the alias
    verify_deep(env)


# --- 6. the API refuses before it parses, and echoes nothing -----------------------------


@pytest.fixture
def api(tmp_path):
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from benchmarks.registry_api import fill_registry

    settings = Settings(home=tmp_path / "state", api_token=TOKEN)
    fill_registry(settings, n_classifiers=1, n_versions=3)
    return TestClient(create_app(settings)), settings


def test_api_bodies_are_authenticated_first_limited_and_never_echoed(api):
    client, settings = api
    url = "/api/models/elpv-classifier/promote"
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    rows = registry_rows(settings)
    # A non-finite margin is a 422 naming the field, not a 500.
    for raw in (b'{"version": 2, "margin": NaN}', b'{"version": 2, "margin": Infinity}'):
        response = client.post(url, content=raw, headers=auth)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "margin"
    # A big body without a token is refused before it is read; with one, it is too large.
    big = b'{"version": 2, "actor": "' + b"x" * (2 << 20) + b'"}'
    response = client.post(url, content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    response = client.post(url, content=big, headers=auth)
    assert response.status_code == 413
    chunked = client.post(url, content=iter([big[:1000], big[1000:]]), headers=auth)
    assert chunked.status_code == 413
    # A 422 says where and what, without echoing the (2 MB) input.
    response = client.post(url, json={"version": 2, "reason": "y" * 50_000}, headers=auth)
    assert response.status_code == 422 and len(response.content) < 2000 and "yyyy" not in response.text
    assert registry_rows(settings) == rows


def test_the_dashboard_carries_security_headers(api):
    client, _ = api
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert client.get("/api/models").headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in client.get("/docs").headers  # Swagger UI loads from a CDN


# --- names everywhere: generated hostile names against every command that takes one ------


def _fails_every_rule(name: str) -> bool:
    from components import names
    for check in (names.check_dataset, names.check_model, names.check_alias,
                  lambda n: names.check_model_ref(n, allow=("scratch",))):
        try:
            check(name)
            return False
        except names.InvalidName:
            pass
    return True


def test_generated_hostile_names_change_nothing_anywhere(state, tmp_path):
    """Property: for any name the rule refuses (traversal in every spelling, absolute paths,
    NUL, very long, unicode, shell metacharacters), every command that takes a name refuses
    it and nothing in the state directory changes; the deep check still finds 0 problems."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st
    from typer.testing import CliRunner

    from app.cli import app

    settings, env = state
    raw, export, weights = tmp_path / "raw", tmp_path / "export.json", tmp_path / "w.safetensors"
    export.write_text("[]")
    weights.write_bytes(b"\0" * 16)
    commands = [
        ["ingest", str(raw), "--dataset", "{}"], ["labels", str(export), "--dataset", "{}"],
        ["pretrain", "--dataset", "{}"], ["pretrain", "--dataset", DATASET, "--init-from", "{}"],
        ["adapt", "--dataset", "{}"], ["adapt", "--dataset", DATASET, "--backbone", "{}"],
        ["evaluate", "--dataset", "{}"], ["evaluate", "--dataset", DATASET, "--backbone", "{}"],
        ["promote", "{}"], ["promote", f"{MODEL}:1", "--alias", "{}"], ["promote", "--rollback", "{}"],
        ["pipeline", str(raw), "--dataset", "{}", "--labels", str(export)], ["models", "show", "{}"],
        ["backbone", "import", str(weights), "--name", "{}"], ["backbone", "baseline", "{}"],
        ["feedback", "run", "--dataset", "{}"], ["feedback", "retrain", "--dataset", "{}"],
        ["feedback", "retrain", "--dataset", DATASET, "--backbone", "{}"], ["feedback", "webhook", "--dataset", "{}"],
        ["feedback", "serve", "--dataset", "{}"], ["serve", "--dataset", "{}"],
    ]
    os.environ["DLVM_HOME"] = str(settings.home)  # in case a command got past its checks
    before, rows = tree(settings.home), registry_rows(settings)
    traversal = st.sampled_from(["..", "../..", "../../..", "..\\..", "%2e%2e", "..%2f", ".", "/", "~", "//"])
    pieces = st.one_of(traversal, st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=4),
                       st.sampled_from(["\0", "\n", ";", "$(", "`", "|", "&", "*", "'", '"', " ", "\u202e", "é",
                                        "x" * 130, "/etc/passwd", "C:\\", "a@", ":0"]))
    names = st.lists(pieces, min_size=1, max_size=4).map("".join).filter(_fails_every_rule)
    runner = CliRunner()

    @hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(name=names)
    def every_command_refuses(name):
        for template in commands:
            args = [part.replace("{}", name) if part == "{}" else part for part in template]
            result = runner.invoke(app, args)
            # Refused (exit 2 from the name check), or read as a flag ('--help': usage, nothing run).
            assert result.exit_code != 0 or result.output.startswith("Usage"), (args, result.output)

    try:
        every_command_refuses()
    finally:
        os.environ.pop("DLVM_HOME", None)
    assert tree(settings.home) == before and registry_rows(settings) == rows
    verify_deep(env)


# --- 4, 10, 11, 13: crashes and silent surprises -----------------------------------------


def test_a_name_too_long_is_quarantined_and_the_rest_ingested(state, tmp_path):
    """Probe 4: a 254-character file name (valid on ext4) failed the whole ingest after 21 s
    of retries with a 200-line traceback."""
    _, env = state
    raw = raw_images(tmp_path / "long", n=5)
    long_name = "L" * 250 + ".png"
    (raw / long_name).write_bytes(sorted(raw.glob("*.png"))[0].read_bytes()[:-1] + b"\0")
    proc = dlvm(env, "ingest", str(raw), "--dataset", "long")
    assert "name_too_long" in proc.stdout and "5 images, 1 quarantined" in proc.stdout
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr


def test_errors_are_one_line_and_debug_shows_the_traceback(state):
    """Probe 11: every CLI error printed a full traceback before its one-line `error:`."""
    _, env = state
    proc = dlvm(env, "labels", "/nonexistent/export.json", "--dataset", DATASET, check=False)
    assert proc.returncode == 1 and "error:" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    proc = dlvm(env, "--debug", "labels", "/nonexistent/export.json", "--dataset", DATASET, check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stdout + proc.stderr


def _export(manifest_paths: list[str]) -> list[dict]:
    return [{"id": i, "data": {"image": f"/data/local-files/?d=raw/{path}"},
             "annotations": [{"id": i, "result": [{"type": "choices", "from_name": "label", "to_name": "image",
                                                   "value": {"choices": [path.split("-")[0]]}}]}]}
            for i, path in enumerate(manifest_paths)]


def test_class_lists_are_normalised_and_an_empty_class_is_refused(state, tmp_path):
    """Probe 13: `--classes "crazing, scratches"` kept the space, the class matched nothing,
    and the command exited 0 with that snapshot as the newest."""
    settings, env = state
    paths = sorted(p.name for p in (tmp_path / "raw").glob("*.png"))
    export = tmp_path / "export.json"
    export.write_text(json.dumps(_export(paths)))
    with session_scope(settings) as s:
        n_snapshots = len(s.exec(select(LabelSnapshot)).all())
    proc = dlvm(env, "labels", str(export), "--dataset", DATASET, "--classes", "top,middle,bottm", check=False)
    assert proc.returncode == 1 and "'bottm'" in proc.stdout and "--allow-empty-classes" in proc.stdout
    with session_scope(settings) as s:
        assert len(s.exec(select(LabelSnapshot)).all()) == n_snapshots
    out = dlvm(env, "labels", str(export), "--dataset", DATASET, "--classes", " top, middle , bottom").stdout
    assert "(unchanged)" in out  # the same classes and labels as the registered snapshot: spaces are gone
    proc = dlvm(env, "labels", str(export), "--dataset", DATASET, "--classes", "top,,middle", check=False)
    assert proc.returncode == 2 and "empty class name" in proc.stderr
    proc = dlvm(env, "labels", str(export), "--dataset", DATASET, "--min-labels", "1000", check=False)
    assert proc.returncode == 1 and "fewer than the 1000 required" in proc.stdout


def test_a_copied_state_directory_still_verifies_and_works(state, tmp_path):
    """Probe 10: `registry verify` and `dlvm labels` crashed on a DLVM_HOME copied elsewhere
    (the registry keeps absolute file:// uris)."""
    import shutil

    settings, env = state
    moved = tmp_path / "elsewhere" / "state"
    shutil.copytree(settings.home, moved)
    moved_env = dict(env, DLVM_HOME=str(moved))
    if not settings.database_url.startswith("postgresql"):
        moved_env.pop("DLVM_DATABASE_URL", None)
    shutil.rmtree(settings.home)  # the old place is gone: nothing may still be read from it
    verify_deep(moved_env)
    paths = sorted(p.name for p in (tmp_path / "raw").glob("*.png"))
    export = tmp_path / "export.json"
    export.write_text(json.dumps(_export(paths)))
    assert "48 labels" in dlvm(moved_env, "labels", str(export), "--dataset", DATASET).stdout


def test_models_show_flags_a_missing_or_corrupted_artifact(state):
    """Probe 14: `models show` did not flag a version whose artifact is missing or corrupted."""
    settings, env = state
    with session_scope(settings) as s:
        uris = [v.artifact_uri for v in s.exec(select(ModelVersion).order_by(col(ModelVersion.version))).all()]
    from components.storage import parse_uri
    first, second = (Path(parse_uri(u).path) for u in uris[:2])
    first.chmod(0o644)
    first.write_bytes(b"damaged")
    second.unlink()
    shown = json.loads(dlvm(env, "models", "show", MODEL, "--json").stdout)
    status = {v["version"]: v["artifact_status"] for v in shown["versions"]}
    assert status[1] == "corrupted" and status[2] == "missing" and status[3] == "ok"
    assert "ARTIFACT CORRUPTED" in dlvm(env, "models", "show", MODEL).stdout


# --- 9. killed runs do not stay 'running' ------------------------------------------------


def _runs(settings: Settings) -> list:
    from components.registry.tables import Run
    with session_scope(settings) as s:
        return s.exec(select(Run).order_by(col(Run.id))).all()


def test_a_sigkilled_run_is_reconciled_as_crashed(state, tmp_path):
    """Probe 9: a run killed with SIGKILL stayed `running` in the registry forever."""
    import signal
    settings, env = state
    raw = raw_images(tmp_path / "killed", n=4)
    kill = "import os, signal\ndef wrapper(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    proc = run_wrapped(env, "flows.ingest.stage_into_workspace", kill, "ingest", str(raw), "--dataset", "killed")
    assert proc.returncode == -signal.SIGKILL
    assert [r.status for r in _runs(settings)][-1] == "running"
    out = dlvm(env, "models", "list").stdout  # any command reconciles
    assert "left running by a killed process" in out
    last = _runs(settings)[-1]
    assert last.status == "failed" and last.error.startswith("crashed")
    assert "new version" in dlvm(env, "ingest", str(raw), "--dataset", "killed").stdout  # and it runs again


def test_sigterm_marks_the_run_and_ends_the_command_promptly(state, tmp_path):
    """Probe 9: SIGTERM (what `timeout`, a scheduler or a container stop send, to the whole
    process group: the embedded Prefect server too) left `dlvm` hanging for minutes on a
    dead server, with its runs 'Running' for good."""
    import signal
    settings, env = state
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}  # the embedded server, as a user has it
    # The command's wait for Prefect after the signal, 15 s by default: it ends all the same, sooner.
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DLVM_EXIT_AFTER_TERMINATION_S="3")
    raw = raw_images(tmp_path / "slow", n=4)
    marker = tmp_path / "staging-started"
    stall = f"import time, pathlib\ndef wrapper(*a, **k):\n    pathlib.Path({str(marker)!r}).touch()\n    time.sleep(600)\n"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPED, "flows.ingest.stage_into_workspace", stall,
                                 "ingest", str(raw), "--dataset", "slow"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not marker.exists():
                assert proc.poll() is None and time.monotonic() < deadline, log.seek(0) or log.read()[-3000:]
                time.sleep(1)
            os.killpg(proc.pid, signal.SIGTERM)  # as `timeout` does: the whole group
            proc.wait(timeout=120)  # ends, instead of retrying a dead server for minutes
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    last = _runs(settings)[-1]
    assert last.status == "failed" and "termination signal" in last.error
