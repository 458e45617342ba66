"""Registry writes: plain functions taking a Session that add rows.

Writers ``flush`` (so ids are assigned) but never commit: the caller's ``session_scope``
decides.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from components.names import check_dataset, check_model
from components.registry.queries import (
    AlreadyRegistered,
    NotFound,
    find_dataset_version,
    find_label_snapshot,
    get_model,
)
from components.registry.tables import (
    MODEL_KINDS,
    RUN_STATUSES,
    Dataset,
    DatasetVersion,
    Evaluation,
    EvaluationResult,
    LabelSnapshot,
    ModelVersion,
    RegisteredModel,
    Run,
    utcnow,
)


def _lock(session: Session, row_type: type, row_id: int) -> None:
    """Serialize writers of one parent row on PostgreSQL (SQLite serializes all writers)."""
    found = session.exec(select(row_type.id).where(row_type.id == row_id).with_for_update()).first()
    if found is None:
        raise NotFound(f"{row_type.__tablename__} id {row_id} not found")


def _next_version(session: Session, column, parent_column, parent_id: int) -> int:
    current = session.exec(select(func.max(column)).where(parent_column == parent_id)).one()
    return (current or 0) + 1


def _get_or_create(session: Session, row_type: type, name: str, **fields: Any):
    row = session.exec(select(row_type).where(row_type.name == name)).first()
    if row is not None:
        return row
    try:
        # A concurrent creator may win the race; the savepoint keeps the caller's
        # transaction alive so that we can read its row instead.
        with session.begin_nested():
            row = row_type(name=name, **fields)
            session.add(row)
    except IntegrityError:
        row = session.exec(select(row_type).where(row_type.name == name)).one()
    return row


def get_or_create_dataset(session: Session, name: str) -> Dataset:
    return _get_or_create(session, Dataset, check_dataset(name))


def add_dataset_version(
    session: Session,
    dataset_id: int,
    *,
    content_hash: str,
    manifest_uri: str,
    manifest_sha256: str,
    dvc_md5: str,
    dvc_file: str,
    n_images: int,
    n_bytes: int,
    source_path: str,
    n_quarantined: int = 0,
    flow_run_id: str | None = None,
) -> DatasetVersion:
    """Register a new content state of a dataset as its next version (1, 2, ...)."""
    _lock(session, Dataset, dataset_id)
    existing = find_dataset_version(session, dataset_id, content_hash)
    if existing is not None:
        raise AlreadyRegistered(
            f"dataset id {dataset_id} already has content {content_hash[:12]} as version {existing.version}"
        )
    row = DatasetVersion(
        dataset_id=dataset_id,
        version=_next_version(session, DatasetVersion.version, DatasetVersion.dataset_id, dataset_id),
        content_hash=content_hash,
        manifest_uri=manifest_uri,
        manifest_sha256=manifest_sha256,
        dvc_md5=dvc_md5,
        dvc_file=dvc_file,
        n_images=n_images,
        n_bytes=n_bytes,
        n_quarantined=n_quarantined,
        source_path=source_path,
        flow_run_id=flow_run_id,
    )
    session.add(row)
    session.flush()
    return row


def add_label_snapshot(
    session: Session,
    dataset_version_id: int,
    *,
    content_hash: str,
    classes: list[str],
    n_labeled: int,
    source: str,
    artifact_uri: str,
    sha256: str,
    n_issues: int = 0,
    flow_run_id: str | None = None,
) -> LabelSnapshot:
    """Register a label snapshot as the next version for its dataset version."""
    _lock(session, DatasetVersion, dataset_version_id)
    existing = find_label_snapshot(session, dataset_version_id, content_hash)
    if existing is not None:
        raise AlreadyRegistered(
            f"dataset version id {dataset_version_id} already has labels {content_hash[:12]}"
            f" as snapshot version {existing.version}"
        )
    row = LabelSnapshot(
        dataset_version_id=dataset_version_id,
        version=_next_version(
            session, LabelSnapshot.version, LabelSnapshot.dataset_version_id, dataset_version_id
        ),
        content_hash=content_hash,
        classes=list(classes),
        n_labeled=n_labeled,
        n_issues=n_issues,
        source=source,
        artifact_uri=artifact_uri,
        sha256=sha256,
        flow_run_id=flow_run_id,
    )
    session.add(row)
    session.flush()
    return row


def start_run(
    session: Session,
    kind: str,
    *,
    flow_run_id: str | None = None,
    params: Mapping[str, Any] | None = None,
    code_revision: str | None = None,
) -> Run:
    row = Run(kind=kind, flow_run_id=flow_run_id, params=dict(params or {}), code_revision=code_revision)
    session.add(row)
    session.flush()
    return row


def finish_run(session: Session, run_id: int, *, status: str = "completed", error: str | None = None) -> Run:
    if status not in RUN_STATUSES or status == "running":
        raise ValueError(f"a run finishes as 'completed' or 'failed', not {status!r}")
    row = session.get(Run, run_id)
    if row is None:
        raise NotFound(f"run id {run_id} not found")
    if row.status != "running":
        raise ValueError(f"run id {run_id} already finished as {row.status!r}")
    row.status, row.error, row.finished_at = status, error, utcnow()
    session.add(row)
    session.flush()
    return row


def get_or_create_model(session: Session, name: str, kind: str, description: str = "") -> RegisteredModel:
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {MODEL_KINDS}, not {kind!r}")
    check_model(name)
    model = _get_or_create(session, RegisteredModel, name, kind=kind, description=description)
    if model.kind != kind:
        raise ValueError(f"model {name!r} is registered as a {model.kind}, not a {kind}")
    return model


def add_model_version(
    session: Session,
    model_name: str,
    *,
    artifact_uri: str,
    sha256: str,
    dataset_version_id: int | None = None,
    label_snapshot_id: int | None = None,
    parent_id: int | None = None,
    run_id: int | None = None,
    flow_run_id: str | None = None,
    code_revision: str | None = None,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Register an already stored and verified artifact as the model's next version."""
    model = get_model(session, model_name)
    _lock(session, RegisteredModel, model.id)
    row = ModelVersion(
        model_id=model.id,
        version=_next_version(session, ModelVersion.version, ModelVersion.model_id, model.id),
        dataset_version_id=dataset_version_id,
        label_snapshot_id=label_snapshot_id,
        parent_id=parent_id,
        run_id=run_id,
        flow_run_id=flow_run_id,
        code_revision=code_revision,
        params=dict(params or {}),
        metrics=dict(metrics or {}),
        artifact_uri=artifact_uri,
        sha256=sha256,
    )
    session.add(row)
    session.flush()
    return row


def add_evaluation(
    session: Session,
    *,
    label_snapshot_id: int,
    report_uri: str,
    report_sha256: str,
    results: Iterable[Mapping[str, Any]] = (),
    plot_uri: str | None = None,
    plot_sha256: str | None = None,
    results_uri: str | None = None,
    results_sha256: str | None = None,
    summary: Mapping[str, Any] | None = None,
    run_id: int | None = None,
    flow_run_id: str | None = None,
) -> Evaluation:
    """Register an evaluation and its result rows.

    Each result row: backbone, method, fraction, seed, n_train, metrics
    ({"accuracy": {"value", "ci_low", "ci_high"}, "macro_f1": ..., "balanced_accuracy": ...})
    and optionally model_version_id.
    """
    evaluation = Evaluation(
        label_snapshot_id=label_snapshot_id,
        run_id=run_id,
        flow_run_id=flow_run_id,
        report_uri=report_uri,
        report_sha256=report_sha256,
        plot_uri=plot_uri,
        plot_sha256=plot_sha256,
        results_uri=results_uri,
        results_sha256=results_sha256,
        summary=dict(summary or {}),
    )
    session.add(evaluation)
    session.flush()
    for r in results:
        session.add(
            EvaluationResult(
                evaluation_id=evaluation.id,
                backbone=r["backbone"],
                model_version_id=r.get("model_version_id"),
                method=r["method"],
                fraction=float(r["fraction"]),
                seed=int(r["seed"]),
                n_train=int(r["n_train"]),
                metrics=dict(r["metrics"]),
            )
        )
    session.flush()
    return evaluation
