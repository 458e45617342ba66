"""Registry reads and writes of what using a model leaves behind: its exports, drift
references and generated sample grids (``model_artifact``), its prediction batches
(``prediction_batch``), and the drift alerts those batches raise. Writers flush, never commit
(the caller's session does)."""
from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from components.registry.queries import NotFound, get_model
from components.registry.tables import (
    MODEL_ARTIFACT_KINDS,
    ModelArtifact,
    ModelVersion,
    PredictionBatch,
    RegisteredModel,
)
from components.registry.views import iso


def add_model_artifact(session: Session, *, model_version_id: int, kind: str, artifact_uri: str, sha256: str,
                       size: int, details: dict[str, Any] | None = None, checks: dict[str, Any] | None = None,
                       flow_run_id: str | None = None) -> ModelArtifact:
    if kind not in MODEL_ARTIFACT_KINDS:
        raise ValueError(f"model artifact kind must be one of {', '.join(MODEL_ARTIFACT_KINDS)}, got {kind!r}")
    if session.get(ModelVersion, model_version_id) is None:
        raise NotFound(f"model version id {model_version_id} not found")
    row = ModelArtifact(model_version_id=model_version_id, kind=kind, artifact_uri=artifact_uri, sha256=sha256,
                        size=size, details=details or {}, checks=checks or {}, flow_run_id=flow_run_id)
    session.add(row)
    session.flush()
    return row


def latest_model_artifact(session: Session, model_version_id: int, kind: str) -> ModelArtifact | None:
    """The newest artifact of ``kind`` derived from a model version (exports are never replaced, only added)."""
    return session.exec(select(ModelArtifact).where(ModelArtifact.model_version_id == model_version_id,
                                                    ModelArtifact.kind == kind)
                        .order_by(col(ModelArtifact.id).desc())).first()


def latest_samples(session: Session, model_version_id: int) -> dict[str, Any] | None:
    """The newest sample grid `dlvm generate` drew from a model version, with its version number; None if none."""
    row = latest_model_artifact(session, model_version_id, "samples")
    if row is None:
        return None
    return {**artifact_dict(row), "version": session.get(ModelVersion, model_version_id).version}


def newest_samples(session: Session, model_name: str) -> dict[str, Any] | None:
    """The newest sample grid of any version of a model, with its version number; None if none."""
    return next((a for a in model_artifacts(session, model_name) if a["kind"] == "samples"), None)


# Where the evaluation in `dlvm adapt --task detection|anomaly` recorded its drawing of test
# examples: the version's ``params["artifacts"][KEY]`` (uri and sha256 of a PNG in the store).
EXAMPLE_DRAWINGS = {"detector": "boxes", "anomaly": "heatmaps"}


def example_drawing(session: Session, model_name: str, version: int) -> dict[str, Any]:
    """``{"version", "drawing", "uri", "sha256"}`` of the examples drawn when a detector (boxes)
    or anomaly model (heat maps) version was evaluated; NotFound when it has none."""
    model = get_model(session, model_name)
    row = session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                  ModelVersion.version == version)).first()
    if row is None:
        raise NotFound(f"model {model_name!r} has no version {version}")
    key = EXAMPLE_DRAWINGS.get(model.kind)
    found = ((row.params or {}).get("artifacts") or {}).get(key) if key else None
    if not found:
        kinds = " or ".join(f"{k} ({v})" for k, v in EXAMPLE_DRAWINGS.items())
        raise NotFound(f"example drawing of {model_name}:{version} not found: drawings are made when a "
                       f"{kinds} is evaluated (dlvm adapt --task detection|anomaly); this is a {model.kind}")
    return {"version": version, "drawing": key, "uri": found["uri"], "sha256": found["sha256"]}


def newest_example_drawing(session: Session, model_name: str) -> dict[str, Any] | None:
    """The example drawing of the newest version of a detector or anomaly model that has one; None if none."""
    model = get_model(session, model_name)
    key = EXAMPLE_DRAWINGS.get(model.kind)
    if key is None:
        return None
    for row in session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id)
                            .order_by(col(ModelVersion.version).desc())):
        found = ((row.params or {}).get("artifacts") or {}).get(key)
        if found:
            return {"version": row.version, "drawing": key, "uri": found["uri"], "sha256": found["sha256"]}
    return None


def add_prediction_batch(session: Session, **fields: Any) -> PredictionBatch:
    if session.get(ModelVersion, fields["model_version_id"]) is None:
        raise NotFound(f"model version id {fields['model_version_id']} not found")
    row = PredictionBatch(**fields)
    session.add(row)
    session.flush()
    return row


def artifact_dict(a: ModelArtifact) -> dict[str, Any]:
    return {"id": a.id, "kind": a.kind, "artifact_uri": a.artifact_uri, "sha256": a.sha256, "size": a.size,
            "details": a.details, "checks": a.checks, "flow_run_id": a.flow_run_id, "created_at": iso(a.created_at)}


def batch_dict(b: PredictionBatch, version: int) -> dict[str, Any]:
    return {"id": b.id, "version": version, "source": b.source, "n_images": b.n_images, "n_failed": b.n_failed,
            "class_counts": b.class_counts, "drift_alert": b.drift_alert, "drift": b.drift,
            "predictions_uri": b.predictions_uri, "predictions_sha256": b.predictions_sha256,
            "summary_uri": b.summary_uri, "summary_sha256": b.summary_sha256, "flow_run_id": b.flow_run_id,
            "created_at": iso(b.created_at)}


def prediction_batches(session: Session, model_name: str, limit: int = 20) -> list[dict[str, Any]]:
    """A model's prediction batches, newest first (any version)."""
    model = get_model(session, model_name)
    rows = session.exec(select(PredictionBatch, ModelVersion.version)
                        .join(ModelVersion, col(PredictionBatch.model_version_id) == ModelVersion.id)
                        .where(ModelVersion.model_id == model.id)
                        .order_by(col(PredictionBatch.id).desc()).limit(limit)).all()
    return [batch_dict(b, v) for b, v in rows]


def model_artifacts(session: Session, model_name: str) -> list[dict[str, Any]]:
    """Exports, drift references and sample grids of every version of a model, newest first, with their version."""
    model = get_model(session, model_name)
    rows = session.exec(select(ModelArtifact, ModelVersion.version)
                        .join(ModelVersion, col(ModelArtifact.model_version_id) == ModelVersion.id)
                        .where(ModelVersion.model_id == model.id)
                        .order_by(col(ModelArtifact.id).desc())).all()
    return [{**artifact_dict(a), "version": v} for a, v in rows]


def drift_message(model: str, batch: dict[str, Any]) -> str:
    drift = batch["drift"]
    fired = ", ".join(t["name"] for t in drift.get("tests", []) if t.get("fired")) or "-"
    return (f"{model}:{batch['version']} prediction batch {batch['id']} ({batch['n_images']} images from "
            f"{batch['source']}, {batch['created_at'][:19].replace('T', ' ')}) differs from the training data: "
            f"{fired} (family-wise false-alarm rate {drift.get('alpha', 0):.0%} per batch)")


def drift_alerts(session: Session) -> list[dict[str, Any]]:
    """One alert per model whose latest tested prediction batch drifted (a later clean batch clears it)."""
    out = []
    latest: dict[int, PredictionBatch] = {}
    for batch, model_id in session.exec(
            select(PredictionBatch, ModelVersion.model_id)
            .join(ModelVersion, col(PredictionBatch.model_version_id) == ModelVersion.id)
            .where(col(PredictionBatch.drift_alert).is_not(None))
            .order_by(col(PredictionBatch.id).desc())).all():
        latest.setdefault(model_id, batch)
    if not latest:
        return out
    names = dict(session.exec(select(RegisteredModel.id, RegisteredModel.name)
                              .where(col(RegisteredModel.id).in_(latest))).all())
    versions = dict(session.exec(select(ModelVersion.id, ModelVersion.version)
                                 .where(col(ModelVersion.id).in_({b.model_version_id for b in latest.values()}))).all())
    for model_id, batch in sorted(latest.items(), key=lambda kv: names[kv[0]]):
        if batch.drift_alert:
            b = batch_dict(batch, versions[batch.model_version_id])
            out.append({"kind": "drift", "severity": "warning", "model": names[model_id], "batch_id": batch.id,
                        "message": drift_message(names[model_id], b)})
    return out
