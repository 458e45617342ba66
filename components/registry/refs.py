"""Resolve the references users and flows pass around ("elpv-mae", "elpv-mae:2",
"elpv-classifier@production", "latest snapshot of elpv") into registry rows."""
from __future__ import annotations

import re
from dataclasses import dataclass

from sqlmodel import Session, col, select

from components.names import InvalidName, check_model_ref
from components.registry import queries
from components.registry.tables import (
    Dataset,
    DatasetVersion,
    Evaluation,
    LabelSnapshot,
    ModelVersion,
    RegisteredModel,
)

SCRATCH = "scratch"
PROMOTED_KINDS = ("classifier", "detector")  # what an alias can be moved to by a gated promotion  # the backbone name of randomly initialised encoders in sweeps
_REF = re.compile(r"^(?P<name>[A-Za-z0-9][\w.\-]*)(?::(?P<version>\d+)|@(?P<alias>[\w.\-]+))?$")


def resolve_model_version(session: Session, ref: str) -> ModelVersion:
    """`name` -> latest version, `name:3` -> version 3, `name@alias` -> the alias holder."""
    try:
        check_model_ref(ref.strip() if isinstance(ref, str) else ref)
    except InvalidName as exc:
        raise InvalidName(f"bad model reference: {exc}; use NAME, NAME:VERSION or NAME@ALIAS") from None
    match = _REF.match(ref.strip())
    name, version, alias = match["name"], match["version"], match["alias"]
    if version:
        return queries.get_model_version(session, name, int(version))
    if alias:
        holder = queries.get_alias_version(session, name, alias)
        if holder is None:
            raise queries.NotFound(f"model {name!r} has no version with alias {alias!r}")
        return holder
    latest = queries.latest_model_version(session, name)
    if latest is None:
        raise queries.NotFound(f"model {name!r} has no versions")
    return latest


def resolve_dataset_version(session: Session, dataset: str, version: int | None = None):
    """The given version of a dataset, or its latest."""
    if version is None:
        return queries.latest_dataset_version(session, dataset)
    return queries.get_dataset_version(session, dataset, version)


def resolve_label_snapshot(session: Session, dataset: str, dataset_version: int | None = None,
                           snapshot_version: int | None = None):
    """(dataset version, label snapshot): the latest snapshot of the (latest) dataset version by default."""
    version = resolve_dataset_version(session, dataset, dataset_version)
    if snapshot_version is None:
        snapshot = queries.latest_label_snapshot(session, version.id)
    else:
        snapshot = session.exec(select(LabelSnapshot).where(
            LabelSnapshot.dataset_version_id == version.id, LabelSnapshot.version == snapshot_version)).first()
    if snapshot is None:
        which = f"snapshot v{snapshot_version}" if snapshot_version else "no label snapshot"
        raise queries.NotFound(f"{dataset} v{version.version} has {which}: run `dlvm labels` first"
                               if not snapshot_version else f"{dataset} v{version.version} has no {which}")
    return version, snapshot


@dataclass
class PromotionContext:
    """Everything the promotion gate compares, resolved in one read of the registry."""
    model_name: str
    candidate: ModelVersion
    current: ModelVersion | None
    dataset: str
    dataset_version: DatasetVersion
    snapshot: LabelSnapshot
    evaluation: Evaluation | None  # None for a detector: its gate evaluates on the snapshot's test split itself
    img_size: int
    preprocess: dict | None = None  # how the candidate decodes images (recorded since preprocessing is configurable)
    kind: str = "classifier"        # or "detector"


def promotion_context(session: Session, candidate_ref: str, alias: str,
                      evaluation_id: int | None = None) -> PromotionContext:
    candidate = resolve_model_version(session, candidate_ref)
    model = session.get(RegisteredModel, candidate.model_id)
    if model.kind not in PROMOTED_KINDS:
        raise ValueError(f"{candidate_ref} is a {model.kind}; only classifiers and detectors are promoted")
    if candidate.label_snapshot_id is None:
        raise ValueError(f"{candidate_ref} has no label snapshot: it cannot be evaluated")
    snapshot = session.get(LabelSnapshot, candidate.label_snapshot_id)
    if model.kind == "detector":
        if evaluation_id is not None:
            raise ValueError(f"{candidate_ref} is a detector: its gate runs on its box snapshot's test split, "
                             "not on an evaluation (drop --evaluation)")
        evaluation = None
    elif evaluation_id is None:
        evaluation = session.exec(select(Evaluation).where(Evaluation.label_snapshot_id == snapshot.id)
                                  .order_by(col(Evaluation.id).desc())).first()
        if evaluation is None:
            raise queries.NotFound(f"no evaluation on label snapshot {snapshot.id} of {candidate_ref}: "
                                   "run `dlvm evaluate` first")
    else:
        evaluation = queries.get_evaluation(session, evaluation_id)
        if evaluation.label_snapshot_id != snapshot.id:
            raise ValueError(f"evaluation {evaluation_id} is on another label snapshot than {candidate_ref}")
    dataset_version = session.get(DatasetVersion, snapshot.dataset_version_id)
    return PromotionContext(
        model_name=model.name, candidate=candidate, current=queries.get_alias_version(session, model.name, alias),
        dataset=session.get(Dataset, dataset_version.dataset_id).name,
        dataset_version=dataset_version, snapshot=snapshot, evaluation=evaluation,
        img_size=int(candidate.params["img_size"]), preprocess=candidate.params.get("preprocess"), kind=model.kind)
