"""Registry queries: plain functions taking a Session.

Writers ``flush`` (so ids are assigned) but never commit: the caller's
``session_scope`` decides. Readers return rows, or plain JSON-able dicts for the API/UI.
Unknown names and versions raise ``NotFound`` naming what was asked for.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from components.registry.tables import (
    MODEL_KINDS,
    RUN_STATUSES,
    Alias,
    Dataset,
    DatasetVersion,
    Evaluation,
    EvaluationResult,
    LabelSnapshot,
    ModelVersion,
    PromotionEvent,
    RegisteredModel,
    Run,
    utcnow,
)


class NotFound(LookupError):
    """A dataset, snapshot, model, version, alias or evaluation that does not exist."""


class AlreadyRegistered(ValueError):
    """The same content is already registered (datasets and label snapshots are content-addressed)."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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


# --- datasets -------------------------------------------------------------------------


def get_or_create_dataset(session: Session, name: str) -> Dataset:
    return _get_or_create(session, Dataset, name)


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


def list_datasets(session: Session) -> list[dict[str, Any]]:
    """Every dataset with its number of versions and its latest version's summary."""
    out = []
    for dataset in session.exec(select(Dataset).order_by(Dataset.name)).all():
        versions = session.exec(
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == dataset.id)
            .order_by(col(DatasetVersion.version).desc())
        ).all()
        latest = versions[0] if versions else None
        out.append(
            {
                "name": dataset.name,
                "n_versions": len(versions),
                "latest_version": latest.version if latest else None,
                "n_images": latest.n_images if latest else None,
                "content_hash": latest.content_hash if latest else None,
                "created_at": _iso(dataset.created_at),
            }
        )
    return out


# --- label snapshots ------------------------------------------------------------------


def find_label_snapshot(session: Session, dataset_version_id: int, content_hash: str) -> LabelSnapshot | None:
    return session.exec(
        select(LabelSnapshot).where(
            LabelSnapshot.dataset_version_id == dataset_version_id, LabelSnapshot.content_hash == content_hash
        )
    ).first()


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


# --- runs -----------------------------------------------------------------------------


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


# --- models ---------------------------------------------------------------------------


def get_or_create_model(session: Session, name: str, kind: str, description: str = "") -> RegisteredModel:
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {MODEL_KINDS}, not {kind!r}")
    model = _get_or_create(session, RegisteredModel, name, kind=kind, description=description)
    if model.kind != kind:
        raise ValueError(f"model {name!r} is registered as a {model.kind}, not a {kind}")
    return model


def get_model(session: Session, name: str) -> RegisteredModel:
    model = session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()
    if model is None:
        raise NotFound(f"model {name!r} not found")
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


def _aliases(session: Session, model_id: int) -> dict[str, int]:
    rows = session.exec(
        select(Alias.name, ModelVersion.version)
        .join(ModelVersion, col(Alias.model_version_id) == ModelVersion.id)
        .where(Alias.model_id == model_id)
        .order_by(Alias.name)
    ).all()
    return {name: version for name, version in rows}


def list_models(session: Session) -> list[dict[str, Any]]:
    """Every registered model: name, kind, n_versions, latest_version, aliases {alias: version}."""
    counts = dict(
        session.exec(
            select(ModelVersion.model_id, func.count()).group_by(ModelVersion.model_id)
        ).all()
    )
    latest = dict(
        session.exec(
            select(ModelVersion.model_id, func.max(ModelVersion.version)).group_by(ModelVersion.model_id)
        ).all()
    )
    aliases: dict[int, dict[str, int]] = {}
    for model_id, alias, version in session.exec(
        select(Alias.model_id, Alias.name, ModelVersion.version)
        .join(ModelVersion, col(Alias.model_version_id) == ModelVersion.id)
        .order_by(Alias.name)
    ).all():
        aliases.setdefault(model_id, {})[alias] = version
    return [
        {
            "name": model.name,
            "kind": model.kind,
            "description": model.description,
            "n_versions": counts.get(model.id, 0),
            "latest_version": latest.get(model.id),
            "aliases": aliases.get(model.id, {}),
            "created_at": _iso(model.created_at),
        }
        for model in session.exec(select(RegisteredModel).order_by(RegisteredModel.name)).all()
    ]


def _version_refs(session: Session, ids: Iterable[int | None]) -> dict[int, dict[str, Any]]:
    """{model_version.id: {"model", "version", "ref": "model:version"}} for the given ids."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = session.exec(
        select(ModelVersion.id, RegisteredModel.name, ModelVersion.version)
        .join(RegisteredModel, col(ModelVersion.model_id) == RegisteredModel.id)
        .where(col(ModelVersion.id).in_(wanted))
    ).all()
    return {i: {"model": name, "version": v, "ref": f"{name}:{v}"} for i, name, v in rows}


def model_detail(session: Session, name: str) -> dict[str, Any]:
    """A model with its versions (newest first, with full lineage), aliases and promotion history."""
    model = get_model(session, name)
    versions = session.exec(
        select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(col(ModelVersion.version).desc())
    ).all()
    aliases = _aliases(session, model.id)
    events = session.exec(
        select(PromotionEvent)
        .where(PromotionEvent.model_id == model.id)
        .order_by(col(PromotionEvent.id).desc())
    ).all()

    datasets = {
        dv.id: {"id": dv.id, "name": ds_name, "version": dv.version, "content_hash": dv.content_hash}
        for dv, ds_name in session.exec(
            select(DatasetVersion, Dataset.name)
            .join(Dataset, col(DatasetVersion.dataset_id) == Dataset.id)
            .where(col(DatasetVersion.id).in_({v.dataset_version_id for v in versions} - {None}))
        ).all()
    }
    snapshots = {
        s.id: {"id": s.id, "version": s.version, "dataset_version_id": s.dataset_version_id,
               "content_hash": s.content_hash, "classes": s.classes}
        for s in session.exec(
            select(LabelSnapshot).where(col(LabelSnapshot.id).in_({v.label_snapshot_id for v in versions} - {None}))
        ).all()
    }
    refs = _version_refs(
        session,
        [v.parent_id for v in versions]
        + [i for e in events for i in promotion_event_version_ids(e)],
    )
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)

    return {
        "name": model.name,
        "kind": model.kind,
        "description": model.description,
        "created_at": _iso(model.created_at),
        "aliases": aliases,
        "versions": [
            {
                "id": v.id,
                "version": v.version,
                "created_at": _iso(v.created_at),
                "aliases": by_version.get(v.version, []),
                "dataset": datasets.get(v.dataset_version_id),
                "label_snapshot": snapshots.get(v.label_snapshot_id),
                "parent": refs[v.parent_id]["ref"] if v.parent_id in refs else None,
                "parent_id": v.parent_id,
                "run_id": v.run_id,
                "flow_run_id": v.flow_run_id,
                "code_revision": v.code_revision,
                "params": v.params,
                "metrics": v.metrics,
                "artifact_uri": v.artifact_uri,
                "sha256": v.sha256,
            }
            for v in versions
        ],
        "promotions": [promotion_dict(e, refs) for e in events],
    }


def promotion_event_version_ids(event: PromotionEvent) -> tuple[int | None, ...]:
    return event.candidate_version_id, event.previous_version_id, event.new_version_id


def promotion_dict(event: PromotionEvent, refs: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    """A promotion event as plain data; ``refs`` from ``_version_refs`` gives version numbers."""
    def number(version_id: int | None) -> int | None:
        return refs[version_id]["version"] if version_id in refs else None

    return {
        "id": event.id,
        "alias": event.alias,
        "decision": event.decision,
        "candidate_version": number(event.candidate_version_id),
        "previous_version": number(event.previous_version_id),
        "new_version": number(event.new_version_id),
        "evaluation_id": event.evaluation_id,
        "evidence": event.evidence,
        "actor": event.actor,
        "reason": event.reason,
        "created_at": _iso(event.created_at),
    }


# --- evaluations ----------------------------------------------------------------------


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


def get_evaluation(session: Session, evaluation_id: int) -> Evaluation:
    row = session.get(Evaluation, evaluation_id)
    if row is None:
        raise NotFound(f"evaluation id {evaluation_id} not found")
    return row


def evaluation_detail(session: Session, evaluation_id: int) -> dict[str, Any]:
    """An evaluation with its artifacts, summary and result rows."""
    e = get_evaluation(session, evaluation_id)
    results = session.exec(
        select(EvaluationResult).where(EvaluationResult.evaluation_id == e.id).order_by(col(EvaluationResult.id))
    ).all()
    refs = _version_refs(session, [r.model_version_id for r in results])
    return {
        "id": e.id,
        "label_snapshot_id": e.label_snapshot_id,
        "run_id": e.run_id,
        "flow_run_id": e.flow_run_id,
        "report": {"uri": e.report_uri, "sha256": e.report_sha256},
        "plot": {"uri": e.plot_uri, "sha256": e.plot_sha256} if e.plot_uri else None,
        "results_file": {"uri": e.results_uri, "sha256": e.results_sha256} if e.results_uri else None,
        "summary": e.summary,
        "created_at": _iso(e.created_at),
        "results": [
            {
                "backbone": r.backbone,
                "model_version": refs[r.model_version_id]["ref"] if r.model_version_id in refs else None,
                "method": r.method,
                "fraction": r.fraction,
                "seed": r.seed,
                "n_train": r.n_train,
                "metrics": r.metrics,
            }
            for r in results
        ],
    }


def list_evaluations(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    rows = session.exec(select(Evaluation).order_by(col(Evaluation.id).desc()).limit(limit)).all()
    return [
        {"id": e.id, "label_snapshot_id": e.label_snapshot_id, "flow_run_id": e.flow_run_id,
         "summary": e.summary, "created_at": _iso(e.created_at)}
        for e in rows
    ]


# --- consistency ----------------------------------------------------------------------


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
    return refs
