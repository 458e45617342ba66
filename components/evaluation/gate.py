"""The promotion gate: statistics only, no registry access.

A candidate passes against a comparator X when, on the shared test set, the lower
bound of the one-sided ``confidence`` paired-bootstrap interval of
``metric(candidate) - metric(X)`` exceeds ``margin``. In words: we are ``confidence``
sure the candidate is better than X by more than ``margin``. It passes overall only if
it passes against every comparator (the current production holder, each generic
baseline, ...). "Higher number wins" is never enough.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from components.evaluation.metrics import as_pred, paired_diffs


@dataclass
class GateResult:
    """The gate's decision and its evidence, one entry per comparator in ``comparisons``.

    Each comparison holds candidate/other metric values, ``diff`` = candidate - other,
    ``ci_low`` = the one-sided lower confidence bound of the diff (the ``1 - confidence``
    bootstrap quantile; the number tested against the margin), ``ci_high`` = the
    ``confidence`` quantile (the matching upper bound, for display), ``p_value`` = the
    fraction of resamples with diff <= 0, and ``passed``.
    """

    passed: bool
    metric: str
    margin: float
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (NaN replaced by None so strict JSON encoders accept it)."""

        def clean(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (float, np.floating)):
                return None if np.isnan(v) else float(v)
            if isinstance(v, np.bool_):
                return bool(v)
            return v

        return clean(asdict(self))


def promotion_gate(
    y_true: np.ndarray,
    candidate_pred: np.ndarray,
    others: dict[str, np.ndarray],
    num_classes: int,
    metric: str = "accuracy",
    margin: float = 0.0,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> GateResult:
    """Decide whether ``candidate_pred`` beats every prediction vector in ``others`` by more than ``margin``.

    Predictions may be class ids [N] or probabilities [N, C]. All comparisons use the
    same bootstrap resamples (same ``seed``), so the decision is reproducible. An empty
    ``others`` passes, with a reason saying there was nothing to compare against.
    """
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    cand = as_pred(candidate_pred)
    if not others:
        return GateResult(True, metric, margin, {}, "passed: no comparators, nothing to compare against", confidence)
    comparisons: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    for name in sorted(others):
        vc, vo, diff, diffs = paired_diffs(y_true, cand, as_pred(others[name]), metric, num_classes, n_boot, seed)
        diffs = diffs[~np.isnan(diffs)]
        if diffs.size:
            low, high = np.quantile(diffs, [1 - confidence, confidence])
            p_value = float(np.mean(diffs <= 0))
        else:  # empty test set: no evidence, cannot pass
            low = high = p_value = float("nan")
        ok = bool(low > margin)  # NaN compares False
        comparisons[name] = {
            "candidate": vc,
            "other": vo,
            "diff": diff,
            "ci_low": float(low),
            "ci_high": float(high),
            "p_value": p_value,
            "passed": ok,
        }
        if not ok:
            failures.append(f"{name} (diff {diff:+.4f}, lower bound {low:+.4f} <= margin {margin:+.4f})")
    pct = f"{confidence:.0%}"
    if failures:
        reason = f"failed: {metric} not above margin at {pct} one-sided confidence against " + "; ".join(failures)
    else:
        reason = (
            f"passed: {metric} beats all {len(comparisons)} comparator(s) ({', '.join(comparisons)}) "
            f"by more than {margin:+.4f} at {pct} one-sided confidence"
        )
    return GateResult(not failures, metric, margin, comparisons, reason, confidence)
