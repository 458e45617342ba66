"""Flow `promote`: move an alias (default `production`) to a candidate classifier only if,
on the same test split and under paired bootstrap tests on a metric imbalance cannot game
(macro-F1 by default), it is significantly better than the majority class, not
significantly worse than the strongest sanity baseline and the strongest from-scratch
model, and better by the margin than the strongest generic backbone and the current holder
(components/evaluation/gate.py). Every decision is a promotion event that records every
comparison.

A candidate detector (registry kind `detector`) is gated on mAP@0.5 over its box snapshot's
test split by the same rules: significantly better than finding no boxes at all and than the
alias's holder (paired bootstrap over images, `detector_gate`); `metric` and `evaluation_id`
are the classifiers'."""
from __future__ import annotations

import json

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.evaluation.gate import (
    Comparator,
    DetectorComparator,
    describe,
    detector_gate,
    promotion_gate,
    strongest_comparators,
)
from components.evaluation.metrics import DEFAULT_GATE_METRIC, check_metric
from components.names import check_alias, check_model_ref
from components.orchestration.lineage import recorded_run
from components.registry import refs
from components.registry.db import session_scope
from components.registry.promotion import HolderChanged, record_promotion
from components.registry.refs import SCRATCH
from components.settings import get_settings
from components.training.adapt import Classifier, predict_proba
from components.training.detect import Detector
from flows.tasks import (
    load_artifact,
    load_box_set,
    load_labeled_set,
    load_model_checkpoint,
)

REGATE_ATTEMPTS = 5  # each lost race means another promotion won: with N at once, N - 1 at most


@task(name="load-promotion-context", cache_policy=NO_CACHE)
def promotion_context(settings, candidate_ref: str, alias: str, evaluation_id: int | None):
    with session_scope(settings) as session:
        return refs.promotion_context(session, candidate_ref, alias, evaluation_id)


@task(name="predict-test-split", cache_policy=NO_CACHE)
def predict_test(settings, model_version, images) -> np.ndarray:
    checkpoint = load_model_checkpoint(settings, model_version)
    return predict_proba(Classifier.from_state(checkpoint["classifier"]), images).argmax(axis=1)


@task(name="detect-test-split", cache_policy=NO_CACHE)
def detect_test(settings, model_version, images) -> list[dict]:
    return Detector.from_state(load_model_checkpoint(settings, model_version)).detect(images)


def gate_detector(settings, ctx, alias: str, margin: float, confidence: float):
    """(gate, evidence) of a detector: its box snapshot's test split, the candidate's and the
    holder's boxes on it (the holder decodes at its own size; boxes are scaled to the
    candidate's frame), the no-boxes baseline (:func:`detector_gate`)."""
    data = load_box_set(settings, ctx.dataset, ctx.dataset_version, ctx.snapshot, ctx.img_size)
    test_idx = data.test_idx
    if len(test_idx) == 0:
        raise ValueError(f"label snapshot v{ctx.snapshot.version} has no test images to gate {ctx.model_name} on")
    truths = [{"boxes": data.boxes[i], "labels": data.labels[i]} for i in test_idx]
    candidate = detect_test(settings, ctx.candidate, data.images[test_idx])
    comparators = [DetectorComparator("majority: no boxes", "majority", [_no_boxes() for _ in test_idx],
                                      "a detector that finds nothing (every image good)")]
    holder = ctx.current
    if holder is not None and holder.id != ctx.candidate.id:
        held = Detector.from_state(load_model_checkpoint(settings, holder))
        if held.classes != data.classes:
            raise ValueError(f"{ctx.model_name}@{alias} (v{holder.version}) detects {held.classes}, the candidate's "
                             f"snapshot has {data.classes}: they cannot be compared on one test split")
        theirs = load_box_set(settings, ctx.dataset, ctx.dataset_version, ctx.snapshot, held.img_size)
        found = held.detect(theirs.images[test_idx])
        for d in found:
            d["boxes"] = d["boxes"] * (ctx.img_size / held.img_size)
        comparators.append(DetectorComparator(f"holder: {alias} v{holder.version}", "holder", found,
                                              f"{ctx.model_name}:{holder.version}"))
    gate = detector_gate(truths, candidate, comparators, data.classes, margin=margin, confidence=confidence)
    evidence = {"gate": gate.to_dict(), "evaluation_id": None, "n_test": int(len(test_idx)),
                "label_snapshot_id": ctx.snapshot.id, "candidate_method": ctx.candidate.params.get("method"),
                "holder": {"version_id": holder.id, "version": holder.version} if holder else None}
    return gate, evidence


def _no_boxes() -> dict:
    return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "labels": np.zeros(0, np.int64)}


@task(name="record-promotion", cache_policy=NO_CACHE)
def record(settings, model_name, alias, decision, candidate_id, evaluation_id, evidence, actor, reason,
           holder_id):
    with session_scope(settings) as session:
        return record_promotion(session, model_name=model_name, alias=alias, decision=decision,
                                candidate_version_id=candidate_id, evaluation_id=evaluation_id,
                                evidence=evidence, actor=actor, reason=reason, expected_holder_id=holder_id)


@flow(name="promote", log_prints=True)
def promote_flow(candidate: str, alias: str = "production", evaluation_id: int | None = None,
                 margin: float = 0.0, metric: str = DEFAULT_GATE_METRIC, confidence: float = 0.95,
                 actor: str = "pipeline", reason: str = "") -> dict:
    """Gate `candidate` (a classifier ref such as 'elpv-classifier:3', or a detector's: gated on
    mAP@0.5, see the module docstring) for `alias`, deciding on
    `metric` (macro_f1, balanced_accuracy or accuracy; accuracy is always reported); `reason`
    (why it is proposed) is recorded with the event, the gate's verdict when none is given."""
    check_model_ref(candidate)
    check_alias(alias)
    check_metric(metric)
    settings = get_settings()
    with recorded_run(settings, "promote", {"candidate": candidate, "alias": alias, "margin": margin,
                                            "metric": metric, "evaluation_id": evaluation_id}):
        # Compare-and-swap with the alias: when another promotion moved it while this one was
        # gating, gate again against the new holder (a few times, then give up).
        for attempt in range(1, REGATE_ATTEMPTS + 1):
            ctx = promotion_context(settings, candidate, alias, evaluation_id)
            if ctx.kind == "detector":
                gate, evidence = gate_detector(settings, ctx, alias, margin, confidence)
                holder = ctx.current
                decision = "promoted" if gate.passed else "rejected"
                try:
                    event = record(settings, ctx.model_name, alias, decision, ctx.candidate.id, None, evidence, actor,
                                   reason or gate.reason, holder.id if holder else None)
                    break
                except HolderChanged as exc:
                    if attempt == REGATE_ATTEMPTS:
                        raise
                    print(f"promote: {exc} (attempt {attempt} of {REGATE_ATTEMPTS})")
                    continue
            data = load_labeled_set(settings, ctx.dataset, ctx.dataset_version, ctx.snapshot,
                                    ctx.preprocess or ctx.img_size)
            test_idx = data.test_idx
            results = json.loads(load_artifact(settings, ctx.evaluation.results_uri, ctx.evaluation.results_sha256))
            if sorted(results["test_idx"]) != sorted(int(i) for i in test_idx):
                raise ValueError(f"evaluation {ctx.evaluation.id} used another test split than {candidate}'s "
                                 "label snapshot: re-run evaluate on this snapshot")
            y_test = data.labels[test_idx]
            test_images = data.images[test_idx]
            comparators = strongest_comparators(results, ctx.evaluation.summary.get("domain"), SCRATCH, metric,
                                                f"evaluation {ctx.evaluation.id}")
            holder = ctx.current
            if holder is not None and holder.id != ctx.candidate.id:
                comparators.append(Comparator(f"holder: {alias} v{holder.version}", "holder",
                                              predict_test(settings, holder, test_images),
                                              f"{ctx.model_name}:{holder.version}"))
            candidate_pred = predict_test(settings, ctx.candidate, test_images)
            gate = promotion_gate(y_test, candidate_pred, comparators, len(data.classes), metric=metric,
                                  margin=margin, confidence=confidence)
            decision = "promoted" if gate.passed else "rejected"
            evidence = {"gate": gate.to_dict(), "evaluation_id": ctx.evaluation.id, "n_test": int(len(test_idx)),
                        "label_snapshot_id": ctx.snapshot.id, "candidate_method": ctx.candidate.params.get("method"),
                        "holder": {"version_id": holder.id, "version": holder.version} if holder else None}
            try:
                event = record(settings, ctx.model_name, alias, decision, ctx.candidate.id, ctx.evaluation.id,
                               evidence, actor, reason or gate.reason, holder.id if holder else None)
                break
            except HolderChanged as exc:
                if attempt == REGATE_ATTEMPTS:
                    raise
                print(f"promote: {exc} (attempt {attempt} of {REGATE_ATTEMPTS})")
    for name, comparison in gate.comparisons.items():
        print(f"promote:   {describe(name, comparison, confidence)}")
    print(f"promote: {ctx.model_name} v{ctx.candidate.version} -> {alias}: {decision.upper()} ({gate.reason})")
    return {"decision": decision, "event_id": event.id, "model": ctx.model_name,
            "version": ctx.candidate.version, "alias": alias, "gate": gate.to_dict()}
