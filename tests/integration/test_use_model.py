"""Using a model (issue 17) on a tiny real registry: ELPV images ingested and labeled, a
tiny classifier adapted and put in production, then `predict` (batches, unreadable files,
drift), `export` (ONNX with a recorded parity check, run by the stand-alone snippet with
neither dlvm nor torch importable), the prediction endpoint (same class as `predict`,
413/422, reload only when the alias moves) and the model card."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from sqlmodel import select
from typer.testing import CliRunner

from components.data.elpv import elpv_labels, elpv_root, export_elpv
from components.inference.predict import read_predictions_csv
from components.registry import queries, usage
from components.registry.db import session_scope
from components.registry.promotion import record_promotion
from components.registry.tables import ModelArtifact, PredictionBatch
from components.storage import open_store

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "docs/snippets/onnx_predict.py"
MODEL = "elpv-classifier"
N_DATASET, N_LABELED, N_HELD_BACK = 120, 80, 40
CLASSES = ["functional", "possibly_defective", "likely_defective", "defective"]


def _promote(settings, version_id: int) -> None:
    with session_scope(settings) as session:
        record_promotion(session, model_name=MODEL, alias="production", decision="promoted",
                         candidate_version_id=version_id, evidence={"test": "set by hand"}, actor="test")


@pytest.fixture(scope="module")
def used(tmp_path_factory, prefect_api):
    """(settings, root, summary of the held-back batch): the registry after one adapt + promote
    and one `predict` of held-back ELPV images with two unreadable files among them."""
    from components.settings import get_settings, reset_settings

    root = tmp_path_factory.mktemp("use")
    mp = pytest.MonkeyPatch()
    mp.setenv("DLVM_HOME", str(root / "state"))
    mp.setenv("PREFECT_API_URL", prefect_api)
    for var in ("DLVM_DATABASE_URL", "DLVM_ARTIFACTS", "DLVM_DVC_REMOTE", "DLVM_S3_ENDPOINT"):
        mp.delenv(var, raising=False)
    reset_settings()
    settings = get_settings()
    from flows.adapt import adapt_flow
    from flows.ingest import ingest_flow
    from flows.labels import labels_flow
    from flows.predict import predict_flow

    images, export = export_elpv(root / "elpv", limit=N_DATASET)
    tasks = json.loads(export.read_text())
    for task in tasks[N_LABELED:]:
        task["annotations"] = []  # unlabeled images of the dataset: part of the drift reference
    export.write_text(json.dumps(tasks))
    ingest_flow(str(images), "elpv")
    labels_flow(str(export), "elpv", classes=CLASSES)
    out = adapt_flow("elpv", backbone="scratch", method="probe", recipe="tiny")
    _promote(settings, out["model_version_id"])

    # Held back: ELPV images the dataset does not hold, plus two files that are not images.
    # A random sample of the rest (labels.csv is ordered: its first rows are mostly mono cells).
    taken = {p.name for p in images.iterdir()}
    rest = [row.path for row in elpv_labels() if Path(row.path).name not in taken]
    held = root / "held-back"
    held.mkdir()
    for i in np.random.default_rng(1).choice(len(rest), N_HELD_BACK, replace=False):
        shutil.copy(elpv_root() / rest[i], held / Path(rest[i]).name)
    (held / "notes.txt").write_text("not an image, ignored by extension")
    (held / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (held / "half.png").write_bytes((elpv_root() / elpv_labels()[0].path).read_bytes()[:300])
    summary = predict_flow(str(held), MODEL)
    yield settings, root, summary
    mp.undo()
    reset_settings()


def test_predict_writes_rows_artifacts_and_a_registry_row(used):
    settings, root, summary = used
    assert summary["model"] == f"{MODEL}:1" and summary["n_images"] == N_HELD_BACK
    assert {f["name"] for f in summary["failures"]} == {"broken.png", "half.png"}
    assert all(f["reason"] and f["detail"] for f in summary["failures"])
    assert summary["ignored"] == ["notes.txt"]
    store = open_store(settings)
    with session_scope(settings) as session:
        batch = session.get(PredictionBatch, summary["batch_id"])
    rows = read_predictions_csv(store.get_bytes(batch.predictions_uri, batch.predictions_sha256))
    assert len(rows) == N_HELD_BACK and batch.n_failed == 2 and batch.flow_run_id
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 and r["class"] in CLASSES for r in rows)
    assert sum(batch.class_counts.values()) == N_HELD_BACK
    embeddings = np.load(io.BytesIO(store.get_bytes(batch.embeddings_uri, batch.embeddings_sha256)))
    tag, row = rows[7]["embedding_id"].split(":")
    assert embeddings.shape[0] == N_HELD_BACK and batch.embeddings_sha256.startswith(tag) and row == "7"
    assert json.loads(store.get_bytes(batch.summary_uri, batch.summary_sha256))["n_failed"] == 2


def test_no_drift_on_held_back_images_and_an_alert_on_shifted_ones(used, generic_corpus):
    settings, root, summary = used
    from flows.predict import predict_flow
    assert summary["drift"]["tested"] and summary["drift"]["alert"] is False, summary["drift"]
    inverted, other = root / "inverted", root / "other-domain"
    inverted.mkdir()
    other.mkdir()
    for path in sorted((root / "held-back").glob("cell*.png")):
        with Image.open(path) as img:
            Image.fromarray(255 - np.asarray(img.convert("L"))).save(inverted / path.name)
    for path in sorted((generic_corpus / "train").rglob("*.jpg"))[::97][:N_HELD_BACK]:
        shutil.copy(path, other / path.name)
    for folder in (inverted, other):
        shifted = predict_flow(str(folder), MODEL)
        assert shifted["drift"]["alert"] is True, (folder.name, shifted["drift"]["tests"])
    with session_scope(settings) as session:
        alerts = usage.drift_alerts(session)
        assert [a["model"] for a in alerts] == [MODEL] and "other-domain" in alerts[0]["message"]
        reference = usage.latest_model_artifact(session, queries.get_model_version(session, MODEL, 1).id,
                                                "drift_reference")
        assert reference.details["n_unlabeled"] == N_DATASET - N_LABELED  # built once, reused by every batch
        assert len([a for a in session.exec(select(ModelArtifact)).all()
                    if a.kind == "drift_reference"]) == 1


def test_export_records_a_passing_parity_check_and_the_snippet_runs_it_alone(used, tmp_path):
    settings, root, summary = used
    from app.cli import app
    result = CliRunner().invoke(app, ["export", MODEL, "--torchscript", "--output", str(tmp_path / "model.onnx")])
    assert result.exit_code == 0, result.output
    assert "parity" in result.output and "passed" in result.output
    with session_scope(settings) as session:
        exports = {a.kind: a for a in session.exec(select(ModelArtifact)).all()}
    onnx_row = exports["onnx"]
    parity = onnx_row.checks["parity"]
    assert parity["passed"] and parity["top1_agreement"] >= 0.999 and parity["max_abs_diff"] <= 1e-4
    assert parity["n_images"] >= 20 and "onnxruntime" in parity["runtime"]
    assert exports["torchscript"].checks["parity"]["passed"] and onnx_row.details["opset"] == 17
    assert onnx_row.sha256 == hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest()

    # The snippet, with dlvm and torch made unimportable, agrees with `dlvm predict`'s rows.
    store = open_store(settings)
    with session_scope(settings) as session:
        batch = session.get(PredictionBatch, summary["batch_id"])
    rows = read_predictions_csv(store.get_bytes(batch.predictions_uri, batch.predictions_sha256))[:8]
    images = [str(root / "held-back" / r["image"]) for r in rows]
    blocker = ("import runpy, sys\nfor name in ('app', 'components', 'flows', 'torch'): sys.modules[name] = None\n"
               f"sys.argv = {['onnx_predict.py', str(tmp_path / 'model.onnx'), *images]!r}\n"
               f"runpy.run_path({str(SNIPPET)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-I", "-c", blocker], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [a["class"] for a in answers] == [r["class"] for r in rows]
    for answer, row in zip(answers, rows):
        assert max(abs(answer["probabilities"][c] - row["probabilities"][c]) for c in CLASSES) < 1e-4


def test_endpoint_answers_like_predict_refuses_bad_bodies_and_reloads_only_on_moves(used):
    settings, root, summary = used
    from app.api.app import create_app
    from flows.adapt import adapt_flow
    token = "read-token"
    api = settings.model_copy(update={"api_read_token": SecretStr(token),
                                      "predict_max_bytes": 200_000})
    app = create_app(api)
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    store = open_store(settings)
    with session_scope(settings) as session:
        batch = session.get(PredictionBatch, summary["batch_id"])
    rows = read_predictions_csv(store.get_bytes(batch.predictions_uri, batch.predictions_sha256))[:5]
    for row in rows:
        answer = client.post(f"/api/models/{MODEL}/predict", content=(root / "held-back" / row["image"]).read_bytes(),
                             headers=auth)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["class"] == row["class"] and body["version"] == 1
        assert abs(body["probabilities"][row["class"]] - row["confidence"]) < 1e-4
    image = (root / "held-back" / rows[0]["image"]).read_bytes()
    assert client.post(f"/api/models/{MODEL}/predict", content=image).status_code == 401
    assert client.post(f"/api/models/{MODEL}/predict", content=b"x" * 200_001, headers=auth).status_code == 413
    refused = client.post(f"/api/models/{MODEL}/predict", content=b"plain text, no image", headers=auth)
    assert refused.status_code == 422 and "not_an_image" in refused.json()["detail"]
    assert client.post("/api/models/no-such-model/predict", content=image, headers=auth).status_code == 404
    served = app.state.served_models
    assert served.loads == 1  # five predictions, one load

    out = adapt_flow("elpv", backbone="scratch", method="probe", recipe="tiny", seed=1)
    assert client.post(f"/api/models/{MODEL}/predict", content=image, headers=auth).json()["version"] == 1
    assert served.loads == 1  # a new version alone does not reload: the alias did not move
    _promote(settings, out["model_version_id"])
    assert client.post(f"/api/models/{MODEL}/predict", content=image, headers=auth).json()["version"] == 2
    assert client.post(f"/api/models/{MODEL}/predict", content=image, headers=auth).json()["version"] == 2
    assert served.loads == 2


def test_model_card_and_models_show_come_from_the_registry(used, tmp_path):
    settings, root, summary = used
    from app.cli import app
    runner = CliRunner()
    card_path = tmp_path / "card.md"
    result = runner.invoke(app, ["models", "card", f"{MODEL}:1", "--output", str(card_path)])
    assert result.exit_code == 0, result.output
    card = card_path.read_text()
    assert card.startswith(f"# Model card: {MODEL}:1")
    for section in ("## Intended data", "## Classes", "## Performance", "## Label efficiency and baselines",
                    "## Promotion evidence", "## Export", "## Use and drift", "## Lineage"):
        assert section in card
    assert "elpv v1" in card and "labels v1" in card and "functional" in card and "test recall" in card
    show = runner.invoke(app, ["models", "show", MODEL])
    assert show.exit_code == 0 and "drift alert" in show.output and "ALERT" in show.output
    missing = runner.invoke(app, ["models", "card", "no-such-model"])
    assert missing.exit_code == 1 and "no-such-model" in missing.output
