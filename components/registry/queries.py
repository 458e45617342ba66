"""Registry lookups: plain functions taking a Session that return rows.

Unknown names and versions raise ``NotFound`` naming what was asked for. Writes are in
components/registry/writes.py, JSON views for the API and dashboard in views.py.
"""
from __future__ import annotations

from typing import NamedTuple

from sqlmodel import Session, col, select

from components.registry.tables import (
    Alias,
    Dataset,
    DatasetVersion,
    Evaluation,
    LabelSnapshot,
    ModelArtifact,
    ModelVersion,
    PredictionBatch,
    RegisteredModel,
)


class NotFound(LookupError):
    """A dataset, snapshot, model, version, alias or evaluation that does not exist."""


class AlreadyRegistered(ValueError):
    """The same content is already registered (datasets and label snapshots are content-addressed)."""


def get_dataset(session: Session, name: str) -> Dataset:
    dataset = session.exec(select(Dataset).where(Dataset.name == name)).first()
    if dataset is None:
        raise NotFound(f"dataset {name!r} not found")
    return dataset


def find_dataset_version(session: Session, dataset_id: int, content_hash: str) -> DatasetVersion | None:
    """The version of a dataset with exactly this content, if it was registered before."""
    return session.exec(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset_id, DatasetVersion.content_hash == content_hash
        )
    ).first()


def latest_dataset_version(session: Session, name: str) -> DatasetVersion:
    dataset = get_dataset(session, name)
    row = session.exec(
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset.id)
        .order_by(col(DatasetVersion.version).desc())
    ).first()
    if row is None:
        raise NotFound(f"dataset {name!r} has no versions")
    return row


def get_dataset_version(session: Session, name: str, version: int) -> DatasetVersion:
    dataset = get_dataset(session, name)
    row = session.exec(
        select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id, DatasetVersion.version == version)
    ).first()
    if row is None:
        raise NotFound(f"dataset {name!r} has no version {version}")
    return row


def find_label_snapshot(session: Session, dataset_version_id: int, content_hash: str) -> LabelSnapshot | None:
    return session.exec(
        select(LabelSnapshot).where(
            LabelSnapshot.dataset_version_id == dataset_version_id, LabelSnapshot.content_hash == content_hash
        )
    ).first()


def get_label_snapshot(session: Session, snapshot_id: int) -> LabelSnapshot:
    row = session.get(LabelSnapshot, snapshot_id)
    if row is None:
        raise NotFound(f"label snapshot id {snapshot_id} not found")
    return row


def latest_label_snapshot(session: Session, dataset_version_id: int) -> LabelSnapshot | None:
    return session.exec(
        select(LabelSnapshot)
        .where(LabelSnapshot.dataset_version_id == dataset_version_id)
        .order_by(col(LabelSnapshot.version).desc())
    ).first()


def label_snapshots_newest_first(session: Session, dataset_version_id: int) -> list[LabelSnapshot]:
    return list(session.exec(
        select(LabelSnapshot)
        .where(LabelSnapshot.dataset_version_id == dataset_version_id)
        .order_by(col(LabelSnapshot.version).desc())
    ).all())


def get_model(session: Session, name: str) -> RegisteredModel:
    model = session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()
    if model is None:
        raise NotFound(f"model {name!r} not found")
    return model


def get_model_version(session: Session, name: str, version: int) -> ModelVersion:
    model = get_model(session, name)
    row = session.exec(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == version)
    ).first()
    if row is None:
        raise NotFound(f"model {name!r} has no version {version}")
    return row


def latest_model_version(session: Session, name: str) -> ModelVersion | None:
    model = get_model(session, name)
    return session.exec(
        select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(col(ModelVersion.version).desc())
    ).first()


def get_alias_version(session: Session, model_name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None when the alias is unset (NotFound: unknown model)."""
    model = get_model(session, model_name)
    return session.exec(
        select(ModelVersion)
        .join(Alias, col(Alias.model_version_id) == ModelVersion.id)
        .where(Alias.model_id == model.id, Alias.name == alias)
    ).first()


def find_alias_version(session: Session, model_name: str, alias: str) -> ModelVersion | None:
    """Like :func:`get_alias_version`, but None also when the model is not registered yet."""
    try:
        return get_alias_version(session, model_name, alias)
    except NotFound:
        return None


def parent_ref(session: Session, version: ModelVersion) -> str | None:
    """``name:version`` of a model version's parent (its backbone), or None."""
    if version.parent_id is None:
        return None
    parent = session.get(ModelVersion, version.parent_id)
    model = session.get(RegisteredModel, parent.model_id)
    return f"{model.name}:{parent.version}"


def get_evaluation(session: Session, evaluation_id: int) -> Evaluation:
    row = session.get(Evaluation, evaluation_id)
    if row is None:
        raise NotFound(f"evaluation id {evaluation_id} not found")
    return row


class ArtifactRef(NamedTuple):
    table: str
    id: int
    uri: str
    sha256: str


def referenced_artifacts(session: Session) -> list[ArtifactRef]:
    """Every artifact the registry points at, as (table, id, uri, sha256), for consistency checks."""
    refs: list[ArtifactRef] = []
    for r in session.exec(select(DatasetVersion).order_by(col(DatasetVersion.id))).all():
        refs.append(ArtifactRef("dataset_version", r.id, r.manifest_uri, r.manifest_sha256))
    for r in session.exec(select(LabelSnapshot).order_by(col(LabelSnapshot.id))).all():
        refs.append(ArtifactRef("label_snapshot", r.id, r.artifact_uri, r.sha256))
    for r in session.exec(select(ModelVersion).order_by(col(ModelVersion.id))).all():
        refs.append(ArtifactRef("model_version", r.id, r.artifact_uri, r.sha256))
    for r in session.exec(select(Evaluation).order_by(col(Evaluation.id))).all():
        for uri, sha in ((r.report_uri, r.report_sha256), (r.plot_uri, r.plot_sha256),
                         (r.results_uri, r.results_sha256)):
            if uri:
                refs.append(ArtifactRef("evaluation", r.id, uri, sha or ""))
    for r in session.exec(select(ModelArtifact).order_by(col(ModelArtifact.id))).all():
        refs.append(ArtifactRef("model_artifact", r.id, r.artifact_uri, r.sha256))
    for r in session.exec(select(PredictionBatch).order_by(col(PredictionBatch.id))).all():
        for uri, sha in ((r.predictions_uri, r.predictions_sha256), (r.summary_uri, r.summary_sha256),
                         (r.embeddings_uri, r.embeddings_sha256)):
            if uri:
                refs.append(ArtifactRef("prediction_batch", r.id, uri, sha or ""))
    return refs
