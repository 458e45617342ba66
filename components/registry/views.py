"""Registry views: rows turned into plain JSON-able dicts for the API, the dashboard and
`dlvm models show`."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from components.registry.queries import (
    get_evaluation,
    get_model,
)
from components.registry.tables import (
    Alias,
    Dataset,
    DatasetVersion,
    Evaluation,
    EvaluationResult,
    LabelSnapshot,
    ModelVersion,
    PromotionEvent,
    RegisteredModel,
)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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
                "created_at": iso(dataset.created_at),
            }
        )
    return out


def aliases_of(session: Session, model_id: int) -> dict[str, int]:
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
            "created_at": iso(model.created_at),
        }
        for model in session.exec(select(RegisteredModel).order_by(RegisteredModel.name)).all()
    ]


def version_refs(session: Session, ids: Iterable[int | None]) -> dict[int, dict[str, Any]]:
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
    aliases = aliases_of(session, model.id)
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
    refs = version_refs(
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
        "created_at": iso(model.created_at),
        "aliases": aliases,
        "versions": [
            {
                "id": v.id,
                "version": v.version,
                "created_at": iso(v.created_at),
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
    """A promotion event as plain data; ``refs`` from ``version_refs`` gives version numbers."""
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
        "created_at": iso(event.created_at),
    }


def evaluation_detail(session: Session, evaluation_id: int) -> dict[str, Any]:
    """An evaluation with its artifacts, summary and result rows."""
    e = get_evaluation(session, evaluation_id)
    results = session.exec(
        select(EvaluationResult).where(EvaluationResult.evaluation_id == e.id).order_by(col(EvaluationResult.id))
    ).all()
    refs = version_refs(session, [r.model_version_id for r in results])
    return {
        "id": e.id,
        "label_snapshot_id": e.label_snapshot_id,
        "run_id": e.run_id,
        "flow_run_id": e.flow_run_id,
        "report": {"uri": e.report_uri, "sha256": e.report_sha256},
        "plot": {"uri": e.plot_uri, "sha256": e.plot_sha256} if e.plot_uri else None,
        "results_file": {"uri": e.results_uri, "sha256": e.results_sha256} if e.results_uri else None,
        "summary": e.summary,
        "created_at": iso(e.created_at),
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
         "summary": e.summary, "created_at": iso(e.created_at)}
        for e in rows
    ]
