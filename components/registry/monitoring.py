"""Read-side queries for operators: lineage chains, dataset history, recent runs and
promotions, the evaluation behind a model, and alerts. Plain JSON-able dicts out, for
the API and the dashboard; unknown names raise ``NotFound`` like the other queries."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from components.registry.queries import (
    NotFound,
    get_dataset,
    get_model,
    get_model_version,
    latest_label_snapshot,
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
    Run,
    utcnow,
)
from components.registry.usage import drift_alerts
from components.registry.views import (
    iso,
    promotion_dict,
    promotion_event_version_ids,
    version_refs,
)

PRODUCTION = "production"
STAGING = "staging"


def snapshot_dict(s: LabelSnapshot) -> dict[str, Any]:
    return {"id": s.id, "version": s.version, "n_labeled": s.n_labeled, "n_issues": s.n_issues,
            "classes": s.classes, "source": s.source, "content_hash": s.content_hash,
            "created_at": iso(s.created_at)}


def dataset_history(session: Session, name: str) -> dict[str, Any]:
    """A dataset's versions (newest first) with sizes and their label snapshots."""
    dataset = get_dataset(session, name)
    versions = session.exec(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
                            .order_by(col(DatasetVersion.version).desc())).all()
    snapshots: dict[int, list[dict[str, Any]]] = {}
    for s in session.exec(select(LabelSnapshot)
                          .where(col(LabelSnapshot.dataset_version_id).in_([v.id for v in versions]))
                          .order_by(col(LabelSnapshot.version).desc())).all():
        snapshots.setdefault(s.dataset_version_id, []).append(snapshot_dict(s))
    return {
        "name": dataset.name,
        "created_at": iso(dataset.created_at),
        "versions": [
            {"id": v.id, "version": v.version, "n_images": v.n_images, "n_bytes": v.n_bytes,
             "n_quarantined": v.n_quarantined, "content_hash": v.content_hash, "dvc_md5": v.dvc_md5,
             "source_path": v.source_path, "flow_run_id": v.flow_run_id, "created_at": iso(v.created_at),
             "label_snapshots": snapshots.get(v.id, [])}
            for v in versions
        ],
    }


def lineage(session: Session, model_name: str, version: int) -> list[dict[str, Any]]:
    """How a model version came to be, oldest first: dataset version, label snapshot,
    the backbone chain (a backbone's own parent first), then the version itself.

    Each node: {"kind": "dataset_version" | "label_snapshot" | "model_version", "ref", ...}.
    """
    chain: list[ModelVersion] = []
    current: ModelVersion | None = get_model_version(session, model_name, version)
    while current is not None:
        chain.append(current)
        if len(chain) > 100:  # a parent cycle cannot be written through the API; refuse to loop anyway
            raise ValueError(f"lineage of {model_name}:{version} is deeper than 100 versions")
        current = session.get(ModelVersion, current.parent_id) if current.parent_id is not None else None
    chain.reverse()
    names = dict(session.exec(select(RegisteredModel.id, RegisteredModel.name)
                              .where(col(RegisteredModel.id).in_({v.model_id for v in chain}))).all())
    nodes: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()

    def add(kind: str, row_id: int, node: dict[str, Any]) -> None:
        if (kind, row_id) not in seen:
            seen.add((kind, row_id))
            nodes.append({"kind": kind, "id": row_id, **node})

    for mv in chain:
        if mv.dataset_version_id is not None:
            dv, dataset_name = session.exec(select(DatasetVersion, Dataset.name)
                                            .join(Dataset, col(DatasetVersion.dataset_id) == Dataset.id)
                                            .where(DatasetVersion.id == mv.dataset_version_id)).one()
            add("dataset_version", dv.id, {"ref": f"{dataset_name} v{dv.version}", "dataset": dataset_name,
                                           "version": dv.version, "n_images": dv.n_images, "n_bytes": dv.n_bytes,
                                           "content_hash": dv.content_hash, "created_at": iso(dv.created_at)})
        if mv.label_snapshot_id is not None:
            s = session.get(LabelSnapshot, mv.label_snapshot_id)
            add("label_snapshot", s.id, {"ref": f"labels v{s.version}", **snapshot_dict(s)})
        add("model_version", mv.id, {"ref": f"{names[mv.model_id]}:{mv.version}", "model": names[mv.model_id],
                                     "version": mv.version, "params": mv.params, "metrics": mv.metrics,
                                     "artifact_uri": mv.artifact_uri, "sha256": mv.sha256,
                                     "code_revision": mv.code_revision, "flow_run_id": mv.flow_run_id,
                                     "created_at": iso(mv.created_at)})
    return nodes


def recent_promotions(session: Session, limit: int = 20, model_name: str | None = None) -> list[dict[str, Any]]:
    """Promotion events, newest first, across models (or of one model)."""
    query = (select(PromotionEvent, RegisteredModel.name)
             .join(RegisteredModel, col(PromotionEvent.model_id) == RegisteredModel.id))
    if model_name is not None:
        query = query.where(RegisteredModel.id == get_model(session, model_name).id)
    rows = session.exec(query.order_by(col(PromotionEvent.id).desc()).limit(limit)).all()
    refs = version_refs(session, [i for e, _ in rows for i in promotion_event_version_ids(e)])
    return [{**promotion_dict(e, refs), "model": name} for e, name in rows]


def recent_runs(session: Session, limit: int = 20, status: str | None = None) -> list[dict[str, Any]]:
    """Registry runs (pipeline steps), newest first."""
    query = select(Run)
    if status is not None:
        query = query.where(Run.status == status)
    return [
        {"id": r.id, "kind": r.kind, "status": r.status, "flow_run_id": r.flow_run_id, "error": r.error,
         "started_at": iso(r.started_at), "finished_at": iso(r.finished_at)}
        for r in session.exec(query.order_by(col(Run.id).desc()).limit(limit)).all()
    ]


def model_evaluation_id(session: Session, model_name: str) -> int | None:
    """The evaluation that speaks for a model: the one behind its latest promotion decision;
    else, for a backbone, the latest evaluation that swept it; else the latest evaluation on
    its newest version's label snapshot."""
    model = get_model(session, model_name)
    from_promotion = session.exec(
        select(PromotionEvent.evaluation_id)
        .where(PromotionEvent.model_id == model.id, col(PromotionEvent.evaluation_id).is_not(None))
        .order_by(col(PromotionEvent.id).desc())).first()
    if from_promotion is not None:
        return from_promotion
    swept = session.exec(
        select(EvaluationResult.evaluation_id)
        .join(ModelVersion, col(EvaluationResult.model_version_id) == ModelVersion.id)
        .where(ModelVersion.model_id == model.id)
        .order_by(col(EvaluationResult.evaluation_id).desc())).first()
    if swept is not None:
        return swept
    snapshot_id = session.exec(select(ModelVersion.label_snapshot_id).where(ModelVersion.model_id == model.id)
                               .order_by(col(ModelVersion.version).desc())).first()
    if snapshot_id is None:
        return None
    return session.exec(select(Evaluation.id).where(Evaluation.label_snapshot_id == snapshot_id)
                        .order_by(col(Evaluation.id).desc())).first()


# --- alerts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRules:
    stale_after_days: float = 30.0   # production older than this is stale
    metric_drop: float = 0.02        # production this far below a former holder is a drop
    failed_run_window_days: float = 7.0
    metric: str = "accuracy"


def _metric(version: ModelVersion, metric: str) -> float | None:
    value = (version.metrics or {}).get(metric)
    if isinstance(value, dict):
        value = value.get("value")
    return float(value) if isinstance(value, (int, float)) else None


def alerts(session: Session, rules: AlertRules = AlertRules(), now: datetime | None = None) -> list[dict[str, Any]]:
    """What an operator should look at: failed runs, stale production models, metric drops,
    prediction batches that drifted from the training data.

    Each alert: {"kind": "failed_run" | "stale_production" | "metric_drop" | "drift", "severity":
    "error" | "warning", "model": name or None, "message"}.
    """
    now = now or utcnow()
    out: list[dict[str, Any]] = []
    since = now - timedelta(days=rules.failed_run_window_days)
    for run in session.exec(select(Run).where(Run.status == "failed", col(Run.started_at) >= since)
                            .order_by(col(Run.id).desc())).all():
        first_line = (run.error or "no error recorded").strip().splitlines()[0][:300]
        out.append({"kind": "failed_run", "severity": "error", "model": None, "run_id": run.id,
                    "flow_run_id": run.flow_run_id,
                    "message": f"{run.kind} run {run.id} failed at {iso(run.finished_at or run.started_at)}: "
                               f"{first_line}"})

    holders = session.exec(select(RegisteredModel, ModelVersion)
                           .join(Alias, col(Alias.model_id) == RegisteredModel.id)
                           .join(ModelVersion, col(Alias.model_version_id) == ModelVersion.id)
                           .where(Alias.name == PRODUCTION).order_by(RegisteredModel.name)).all()
    for model, holder in holders:
        ref = f"{model.name}:{holder.version}"
        age_days = (now - holder.created_at).total_seconds() / 86400
        if age_days > rules.stale_after_days:
            out.append({"kind": "stale_production", "severity": "warning", "model": model.name,
                        "message": f"{ref} in production was trained {age_days:.0f} days ago "
                                   f"(more than {rules.stale_after_days:g})"})
        newer = _newer_labels(session, holder)
        if newer:
            out.append({"kind": "stale_production", "severity": "warning", "model": model.name,
                        "message": f"{ref} in production was trained before {newer}: retrain to use them"})
        drop = _metric_drop(session, model, holder, rules)
        if drop:
            out.append({"kind": "metric_drop", "severity": "warning", "model": model.name, "message": drop})
    out += drift_alerts(session)
    return out


def _newer_labels(session: Session, holder: ModelVersion) -> str | None:
    """'dataset v3' or 'label snapshot v2' when data newer than the holder's was registered."""
    if holder.dataset_version_id is None:
        return None
    dv = session.get(DatasetVersion, holder.dataset_version_id)
    latest = session.exec(select(DatasetVersion).where(DatasetVersion.dataset_id == dv.dataset_id)
                          .order_by(col(DatasetVersion.version).desc())).first()
    if latest is not None and latest.version > dv.version:
        return f"dataset version v{latest.version} (it used v{dv.version})"
    if holder.label_snapshot_id is None:
        return None
    used = session.get(LabelSnapshot, holder.label_snapshot_id)
    newest = latest_label_snapshot(session, dv.id)
    if newest is not None and newest.version > used.version:
        return f"label snapshot v{newest.version} ({newest.n_labeled} labels; it used v{used.version})"
    return None


def _metric_drop(session: Session, model: RegisteredModel, holder: ModelVersion, rules: AlertRules) -> str | None:
    """The holder's metric against the best version that held production before it."""
    current = _metric(holder, rules.metric)
    if current is None:
        return None
    former_ids = {i for i in session.exec(
        select(PromotionEvent.new_version_id).where(PromotionEvent.model_id == model.id,
                                                    PromotionEvent.alias == PRODUCTION)).all()
                  if i is not None and i != holder.id}
    best: tuple[float, int] | None = None
    for mv in session.exec(select(ModelVersion).where(col(ModelVersion.id).in_(former_ids))).all():
        value = _metric(mv, rules.metric)
        if value is not None and (best is None or value > best[0]):
            best = (value, mv.version)
    if best is None or best[0] - current < rules.metric_drop:
        return None
    return (f"{model.name}:{holder.version} in production has {rules.metric} {current:.3f}, "
            f"{best[0] - current:.3f} below v{best[1]} ({best[0]:.3f}), which held production before "
            f"(each on its own test split)")


__all__ = ["AlertRules", "NotFound", "alerts", "dataset_history", "lineage", "model_evaluation_id",
           "recent_promotions", "recent_runs", "registry_stamp"]


# --- change detection -----------------------------------------------------------------

# Registry rows are append-only except aliases (every move inserts a promotion event) and
# runs (finished once): the newest id of each table plus the number of finished runs
# changes whenever anything a reader can see changes.
_STAMP_SQL = "SELECT " + ", ".join(
    [f"(SELECT max(id) FROM {table})" for table in (
        "dataset", "dataset_version", "label_snapshot", "run", "registered_model", "model_version",
        "evaluation", "evaluation_result", "promotion_event", "alias", "model_artifact", "prediction_batch")]
    + ["(SELECT count(finished_at) FROM run)"])


def registry_stamp(session: Session) -> tuple:
    """A value that differs whenever the registry's visible content differs (one cheap query)."""
    return tuple(session.connection().exec_driver_sql(_STAMP_SQL).one())
