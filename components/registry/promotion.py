"""Moving aliases: every move is a promotion event with its evidence, in one transaction.

The gate that *decides* (statistics against the current holder and the generic
baseline) lives with the evaluation code; this module records the decision and makes
it take effect atomically. Functions flush into the caller's session and never commit.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlmodel import Session, col, select

from components.names import check_alias
from components.registry.queries import NotFound, get_model
from components.registry.tables import (
    DECISIONS,
    Alias,
    Evaluation,
    ModelVersion,
    PromotionEvent,
    RegisteredModel,
    utcnow,
)


class PromotionError(ValueError):
    """A promotion or rollback that cannot be done as asked (nothing was changed)."""


class HolderChanged(PromotionError):
    """The alias moved between the gate's read of its holder and the recording of the
    decision: the decision compared the candidate with a version that no longer holds it."""

    def __init__(self, model_name: str, alias: str, expected: int | None, actual: int | None):
        self.expected, self.actual = expected, actual
        super().__init__(f"{model_name}@{alias} moved while the candidate was gated (version id "
                         f"{expected} then, {actual} now): gate again against the new holder")


ANY_HOLDER = object()  # record_promotion's default: no compare-and-swap (rollbacks, baselines)


def _alias_row(session: Session, model_id: int, alias: str) -> Alias | None:
    return session.exec(select(Alias).where(Alias.model_id == model_id, Alias.name == alias)).first()


def record_promotion(
    session: Session,
    *,
    model_name: str,
    alias: str,
    decision: str,
    candidate_version_id: int,
    evaluation_id: int | None = None,
    evidence: Mapping[str, Any],
    actor: str,
    reason: str = "",
    expected_holder_id: int | None | object = ANY_HOLDER,
) -> PromotionEvent:
    """Record a promotion decision; for 'promoted' and 'rollback' also point ``alias`` at the candidate.

    ``expected_holder_id`` is the holder (model version id, None for none) the decision was
    made against: if the alias holds another version when the decision is recorded, nothing is
    recorded and :class:`HolderChanged` is raised (compare-and-swap, under the model's row
    lock, so of two concurrent promotions the second sees the first's move and re-gates).

    The alias move and the event are one unit (a savepoint inside the caller's
    transaction): if anything fails, neither is left behind and the error propagates.
    A 'rejected' decision records the event and leaves the alias alone.
    """
    if decision not in DECISIONS:
        raise PromotionError(f"decision must be one of {DECISIONS}, not {decision!r}")
    if not actor:
        raise PromotionError("a promotion needs an actor (who or what decided)")
    check_alias(alias)
    try:
        json.dumps(dict(evidence), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PromotionError(f"evidence must be plain JSON (convert numpy/Decimal values first): {exc}") from exc
    model = get_model(session, model_name)
    # Serialize promotions of one model on PostgreSQL; a no-op on SQLite, whose single
    # writer lock does the same.
    session.exec(select(RegisteredModel.id).where(RegisteredModel.id == model.id).with_for_update()).one()

    candidate = session.get(ModelVersion, candidate_version_id)
    if candidate is None or candidate.model_id != model.id:
        raise NotFound(f"model {model_name!r} has no version with id {candidate_version_id}")
    if evaluation_id is not None and session.get(Evaluation, evaluation_id) is None:
        raise NotFound(f"evaluation id {evaluation_id} not found")

    moves = decision in ("promoted", "rollback")
    current = _alias_row(session, model.id, alias)
    previous_version_id = current.model_version_id if current is not None else None
    if expected_holder_id is not ANY_HOLDER and expected_holder_id != previous_version_id:
        raise HolderChanged(model_name, alias, expected_holder_id, previous_version_id)
    if moves and previous_version_id == candidate.id:
        raise PromotionError(f"{model_name}:{candidate.version} already holds alias {alias!r}")

    with session.begin_nested():
        if moves:
            if current is None:
                current = Alias(model_id=model.id, name=alias, model_version_id=candidate.id)
            else:
                current.model_version_id, current.updated_at = candidate.id, utcnow()
            session.add(current)
            session.flush()  # the alias moves first; the event below must succeed too or both go
        event = PromotionEvent(
            model_id=model.id,
            alias=alias,
            decision=decision,
            candidate_version_id=candidate.id,
            previous_version_id=previous_version_id,
            new_version_id=candidate.id if moves else None,
            evaluation_id=evaluation_id,
            evidence=dict(evidence),
            actor=actor,
            reason=reason,
        )
        session.add(event)
        session.flush()
    return event


def rollback(session: Session, model_name: str, alias: str, actor: str, reason: str = "") -> PromotionEvent:
    """Point ``alias`` back at the version it held before the promotion that installed the current holder.

    Repeated rollbacks walk further back through the promotion history. Recorded as a
    'rollback' event whose evidence names the promotion being undone.
    """
    model = get_model(session, model_name)
    current = _alias_row(session, model.id, alias)
    if current is None:
        raise PromotionError(f"model {model_name!r} has no alias {alias!r}: nothing to roll back")
    holder = session.get(ModelVersion, current.model_version_id)
    undone = session.exec(
        select(PromotionEvent)
        .where(
            PromotionEvent.model_id == model.id,
            PromotionEvent.alias == alias,
            PromotionEvent.decision == "promoted",
            PromotionEvent.new_version_id == current.model_version_id,
        )
        .order_by(col(PromotionEvent.id).desc())
    ).first()
    if undone is None or undone.previous_version_id is None:
        raise PromotionError(
            f"nothing to roll back: {model_name}:{holder.version} is the first version recorded"
            f" for alias {alias!r}"
        )
    target = session.get(ModelVersion, undone.previous_version_id)
    return record_promotion(
        session,
        model_name=model_name,
        alias=alias,
        decision="rollback",
        candidate_version_id=target.id,
        evaluation_id=None,
        evidence={
            "undoes_promotion_event": undone.id,
            "from_version": holder.version,
            "to_version": target.version,
        },
        actor=actor,
        reason=reason,
    )


# --- the generic baseline ---------------------------------------------------------------

BASELINE = "baseline"


def designate_baseline(
    session: Session,
    model_version_id: int,
    *,
    actor: str,
    reason: str = "generic baseline",
    evidence: Mapping[str, Any] | None = None,
) -> PromotionEvent:
    """Put a backbone version under the ``baseline`` alias, as a recorded promotion event.

    A baseline is the reference that candidates are gated against, not a candidate, so
    no gate runs: the event's evidence says so (``designation``) and carries the caller's
    why (``source`` and the like). The decision is 'promoted' (the alias moves), so
    :func:`rollback` undoes it like any other move.
    """
    version = session.get(ModelVersion, model_version_id)
    if version is None:
        raise NotFound(f"model version id {model_version_id} not found")
    model = session.get(RegisteredModel, version.model_id)
    if model.kind != "backbone":
        raise PromotionError(f"{model.name} is a {model.kind}: only backbones are generic baselines")
    return record_promotion(
        session,
        model_name=model.name,
        alias=BASELINE,
        decision="promoted",
        candidate_version_id=version.id,
        evaluation_id=None,
        evidence={"designation": "generic baseline", "gate": "none: a baseline is a reference, not a candidate",
                  **dict(evidence or {})},
        actor=actor,
        reason=reason,
    )


def baseline_refs(session: Session) -> list[str]:
    """``name:version`` of every backbone's ``baseline`` alias holder, by model name."""
    rows = session.exec(
        select(RegisteredModel.name, ModelVersion.version)
        .join(Alias, col(Alias.model_id) == RegisteredModel.id)
        .join(ModelVersion, col(Alias.model_version_id) == ModelVersion.id)
        .where(Alias.name == BASELINE, RegisteredModel.kind == "backbone")
        .order_by(RegisteredModel.name)
    ).all()
    return [f"{name}:{version}" for name, version in rows]
