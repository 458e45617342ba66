"""The promotion gate: statistics only, no registry access.

The gate decides on a metric that class imbalance cannot game: macro-F1 by default
(``GATE_METRICS``: also balanced accuracy, or accuracy if asked for); accuracy is
reported beside it in every comparison. Every comparison is a paired bootstrap of
``metric(candidate) - metric(X)`` on the shared test set, and each kind of comparator
sets what the candidate must show against it (``RULES``):

- ``majority`` (the majority class): significantly **better**: the one-sided lower
  ``confidence`` bound of the difference above ``max(margin, 0)``. A negative margin
  never lets a majority-class-level model through.
- ``sanity`` (the strongest classical baseline: logistic regression / RBF-SVM on pixels
  or HOG) and ``scratch`` (the strongest model trained from scratch): **not
  significantly worse**: the one-sided upper bound of the difference not below 0.
- ``generic`` (the strongest generic-pretrained backbone) and ``holder`` (the alias's
  current holder): significantly **better** by more than ``margin``.

Each kind is represented by its *strongest* member on the gate metric
(``strongest_comparators``), never the weakest. The ``goal`` (recorded, not required):
significantly better than the strongest sanity baseline of any kind.

Detectors (:func:`detector_gate`) are gated by the same rules on mAP@0.5 over test images:
``majority`` is a detector that finds no boxes (every image good), ``holder`` the alias's.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from components.evaluation.baselines import BASELINE_BACKBONE
from components.evaluation.detection import paired_map_comparison
from components.evaluation.metrics import (
    DEFAULT_GATE_METRIC,
    as_pred,
    check_metric,
    evaluate_predictions,
    json_safe,
    paired_comparison,
)
from components.evaluation.report import full_label_runs

KINDS = ("majority", "sanity", "scratch", "generic", "holder")
RULES = {"majority": "better", "sanity": "not_worse", "scratch": "not_worse", "generic": "better", "holder": "better"}
SANITY_KINDS = ("majority", "sanity", "scratch")  # the sanity baselines the goal is measured against


@dataclass(frozen=True)
class Comparator:
    """A prediction vector the candidate is compared with: ``kind`` (one of ``KINDS``) sets the rule."""

    name: str
    kind: str
    pred: np.ndarray
    source: str = ""  # which run it is, in words (method, label fraction, seed)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"comparator kind must be one of {', '.join(KINDS)}, got {self.kind!r}")


@dataclass
class GateResult:
    """The gate's decision and its evidence, one entry per comparator in ``comparisons``.

    Each comparison: ``kind``, ``rule`` (``better`` / ``not_worse``), ``source``,
    ``metric``, ``candidate``/``other`` values and ``diff`` = candidate - other;
    ``ci_low``/``ci_high`` = the ``1 - confidence`` and ``confidence`` bootstrap quantiles of
    the diff (the one-sided lower bound a ``better`` rule tests, the upper bound a
    ``not_worse`` rule tests); ``threshold`` = what that bound is tested against;
    ``p_value`` = the share of resamples against the rule's claim (diff <= 0 for
    ``better``: small means significantly better; diff >= 0 for ``not_worse``: small means
    significantly worse); ``verdict`` in words; ``passed``; and ``accuracy`` of both sides.
    """

    passed: bool
    metric: str
    margin: float
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""
    confidence: float = 0.95
    goal: dict[str, Any] = field(default_factory=dict)
    candidate_metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (NaN replaced by None so strict JSON encoders accept it)."""
        return json_safe(asdict(self))


def promotion_gate(
    y_true: np.ndarray,
    candidate_pred: np.ndarray,
    comparators: Sequence[Comparator],
    num_classes: int,
    metric: str = DEFAULT_GATE_METRIC,
    margin: float = 0.0,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> GateResult:
    """Decide whether ``candidate_pred`` may be promoted (see module doc for the rules).

    Predictions may be class ids [N] or probabilities [N, C]. All comparisons use the
    same bootstrap resamples (same ``seed``), so the decision is reproducible. A
    ``majority`` comparator is required: without it the gate cannot tell a model from
    always answering the most frequent class.
    """
    check_metric(metric)
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    names = [c.name for c in comparators]
    if len(set(names)) != len(names):
        raise ValueError(f"comparator names must be unique, got {names}")
    if not any(c.kind == "majority" for c in comparators):
        raise ValueError("the gate needs the majority-class baseline among its comparators")
    y_true = np.asarray(y_true).astype(np.int64)
    cand = as_pred(candidate_pred)
    comparisons: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    for c in sorted(comparators, key=lambda c: (KINDS.index(c.kind), c.name)):
        rule = RULES[c.kind]
        threshold = max(margin, 0.0) if c.kind == "majority" else (margin if rule == "better" else 0.0)
        comparisons[c.name] = {"kind": c.kind, "source": c.source, **paired_comparison(
            y_true, cand, c.pred, num_classes, metric, rule, threshold, confidence, n_boot, seed)}
        if not comparisons[c.name]["passed"]:
            failures.append(f"{c.name}: {comparisons[c.name]['verdict']}")
    goal = _goal(comparisons, y_true, cand, {c.name: c for c in comparators}, num_classes, metric, confidence,
                 n_boot, seed)
    pct = f"{confidence:.0%}"
    if failures:
        reason = f"refused on {metric} at {pct} one-sided confidence: " + "; ".join(failures)
    else:
        reason = (f"passed on {metric} at {pct} one-sided confidence against all {len(comparisons)} comparator(s)"
                  + (f"; goal {'met' if goal['met'] else 'not met'}: "
                     f"{'' if goal['met'] else 'not '}significantly better than the strongest sanity baseline "
                     f"({goal['against']})"))
    return GateResult(not failures, metric, margin, comparisons, reason, confidence, goal,
                      evaluate_predictions(y_true, cand, num_classes, n_boot=n_boot, seed=seed))


@dataclass(frozen=True)
class DetectorComparator:
    """Another detector's boxes on the candidate's test images: ``kind`` ``majority`` (no boxes
    at all: what "every image is good" amounts to for boxes, mAP 0) or ``holder``."""

    name: str
    kind: str
    detections: Sequence[dict]
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("majority", "holder"):
            raise ValueError(f"a detector is compared with 'majority' (no boxes) or 'holder', got {self.kind!r}")


def detector_gate(truths: Sequence[dict], candidate: Sequence[dict], comparators: Sequence[DetectorComparator],
                  classes: Sequence[str], margin: float = 0.0, confidence: float = 0.95, n_boot: int = 2000,
                  seed: int = 0) -> GateResult:
    """The gate for detectors, on mAP@0.5 over the same test images, by the classifier rules
    (``RULES``): significantly better than finding nothing (above ``max(margin, 0)``) and than
    the alias's holder (by more than ``margin``), each a paired bootstrap over images
    (:func:`components.evaluation.detection.paired_map_comparison`). Detectors have no
    classical or generic baselines to be measured against yet: the evidence says so."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if not any(c.kind == "majority" for c in comparators):
        raise ValueError("the detector gate needs the no-boxes baseline among its comparators")
    comparisons: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    for c in sorted(comparators, key=lambda c: (KINDS.index(c.kind), c.name)):
        threshold = max(margin, 0.0) if c.kind == "majority" else margin
        comparisons[c.name] = {"kind": c.kind, "source": c.source, **paired_map_comparison(
            candidate, c.detections, truths, len(classes), RULES[c.kind], threshold, confidence, n_boot, seed)}
        if not comparisons[c.name]["passed"]:
            failures.append(f"{c.name}: {comparisons[c.name]['verdict']}")
    pct = f"{confidence:.0%}"
    reason = (f"refused on map50 at {pct} one-sided confidence: " + "; ".join(failures) if failures else
              f"passed on map50 at {pct} one-sided confidence against all {len(comparisons)} comparator(s)")
    return GateResult(not failures, "map50", margin, comparisons, reason, confidence)


def _goal(comparisons: dict[str, dict[str, Any]], y_true: np.ndarray, cand: np.ndarray,
          by_name: Mapping[str, Comparator], num_classes: int, metric: str, confidence: float,
          n_boot: int, seed: int) -> dict[str, Any]:
    """Is the candidate significantly better than the strongest sanity baseline (of any kind)?"""
    sanity = [n for n, c in comparisons.items() if c["kind"] in SANITY_KINDS]
    best = max(sanity, key=lambda n: comparisons[n]["other"])
    c = comparisons[best]
    if c["rule"] == "better":
        test = c
    else:
        test = paired_comparison(y_true, cand, by_name[best].pred, num_classes, metric, "better", 0.0, confidence,
                                 n_boot, seed)
    return {"met": test["passed"], "against": best, "other": c["other"], "diff": test["diff"],
            "ci_low": test["ci_low"], "p_value": test["p_value"]}


# ------------------------------------------------------------------------ choosing comparators


def _strongest(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run with the highest value; ties go to the first in (backbone, method, seed) order."""
    ordered = sorted(runs, key=lambda r: (r["backbone"], r["method"], r["seed"]))
    return max(ordered, key=lambda r: r["value"]) if ordered else None


def strongest_comparators(results: Mapping[str, Any], domain: str, scratch: str, metric: str,
                          evaluation: str = "the evaluation") -> list[Comparator]:
    """The strongest full-label run of each kind in an evaluation (see module doc), on ``metric``:
    the majority class; the best classical baseline; the best from-scratch run (any method, any
    seed); the best run of any other non-domain backbone (the generic ones). Strongest on the
    test set itself: a choice that can only make the gate harder to pass."""
    runs = full_label_runs(results, metric)
    majority = [r for r in runs if r["backbone"] == BASELINE_BACKBONE and r["method"] == "majority"]
    if not majority:
        raise ValueError(f"{evaluation} has no sanity baselines at 100 % of the labels: re-run `dlvm evaluate` "
                         "(every evaluation now fits them)")
    groups = {
        "majority": majority,
        "sanity": [r for r in runs if r["backbone"] == BASELINE_BACKBONE and r["method"] != "majority"],
        "scratch": [r for r in runs if r["backbone"] == scratch],
        "generic": [r for r in runs if r["backbone"] not in (BASELINE_BACKBONE, scratch, domain)],
    }
    out = []
    for kind, members in groups.items():
        best = _strongest(members)
        if best is None:
            continue
        name = (f"{kind}: {best['method']}" if best["backbone"] == BASELINE_BACKBONE
                else f"{kind}: {best['backbone']} ({best['method']})")
        out.append(Comparator(name, kind, best["pred"],
                              f"{best['backbone']} / {best['method']}, 100 % of the labels, seed {best['seed']}"))
    return out


def describe(name: str, c: Mapping[str, Any], confidence: float) -> str:
    """One line for a comparison, e.g. for ``dlvm promote``."""
    def num(v: Any, fmt: str) -> str:
        return "nan" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)

    bound = "lower" if c["rule"] == "better" else "upper"
    b = c["ci_low"] if c["rule"] == "better" else c["ci_high"]
    need = f"must be better by > {c['threshold']:+.3f}" if c["rule"] == "better" else "must not be worse"
    acc = c.get("accuracy")  # classifiers only
    accuracy = f"; accuracy {num(acc.get('candidate'), '.3f')} vs {num(acc.get('other'), '.3f')}" if acc else ""
    return (f"{'PASS' if c['passed'] else 'FAIL'}  {name}: {c['metric']} {num(c['candidate'], '.3f')} vs "
            f"{num(c['other'], '.3f')} (diff {num(c['diff'], '+.3f')}, {confidence:.0%} {bound} bound "
            f"{num(b, '+.3f')}, p {num(c['p_value'], '.3f')}{accuracy}) {need}: {c['verdict']}")
