"""Classification metrics and bootstrap statistics, in numpy.

Every metric is computed from a confusion matrix, so the bootstrap can resample the
test set thousands of times as a batch of confusion matrices (one ``bincount`` per
chunk of resamples) instead of a Python loop.

Absent classes: a class that is neither in ``y_true`` nor in ``y_pred`` is left out of
macro averages (it carries no evidence either way); a class that is predicted but never
true counts in macro-F1 with F1 = 0 (every such prediction is wrong) and is left out of
balanced accuracy (its recall is undefined). Metrics of an empty set are NaN.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray, int], float]

# What decisions (the promotion gate, the label-efficiency reference) may be made on: macro-F1
# by default, because class imbalance cannot game it the way it games accuracy.
GATE_METRICS = ("macro_f1", "balanced_accuracy", "accuracy")
DEFAULT_GATE_METRIC = "macro_f1"

# Resamples per bincount chunk: bounds memory at about chunk * n_test * 8 bytes.
_CHUNK_ELEMENTS = 4_000_000


def as_pred(pred_or_proba: np.ndarray) -> np.ndarray:
    """Class predictions from either predictions [N] or class probabilities [N, C] (argmax)."""
    a = np.asarray(pred_or_proba)
    if a.ndim == 2:
        return a.argmax(axis=1).astype(np.int64)
    if a.ndim != 1:
        raise ValueError(f"expected predictions [N] or probabilities [N, C], got shape {a.shape}")
    return a.astype(np.int64)


def _check(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).astype(np.int64).ravel()
    p = as_pred(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape[0]} items but predictions have {p.shape[0]}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes})")
    return t, p


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts, rows = true class, columns = predicted class."""
    t, p = _check(y_true, y_pred, num_classes)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


# Batched metrics over confusion matrices [..., C, C] -> [...].
def _accuracy_cm(cm: np.ndarray) -> np.ndarray:
    total = cm.sum(axis=(-2, -1))
    correct = np.trace(cm, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def _macro_f1_cm(cm: np.ndarray) -> np.ndarray:
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support = cm.sum(axis=-1)  # true count per class
    predicted = cm.sum(axis=-2)
    denom = support + predicted  # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (support + predicted)
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    n_present = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_present > 0, f1.sum(axis=-1) / np.maximum(n_present, 1), np.nan)


def _balanced_accuracy_cm(cm: np.ndarray) -> np.ndarray:
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support = cm.sum(axis=-1)
    present = support > 0
    recall = np.where(present, tp / np.maximum(support, 1), 0.0)
    n_present = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_present > 0, recall.sum(axis=-1) / np.maximum(n_present, 1), np.nan)


_FROM_CONFUSION: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "accuracy": _accuracy_cm,
    "macro_f1": _macro_f1_cm,
    "balanced_accuracy": _balanced_accuracy_cm,
}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Fraction of correct predictions."""
    return float(_accuracy_cm(confusion_matrix(y_true, y_pred, num_classes)))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in y_true or y_pred."""
    return float(_macro_f1_cm(confusion_matrix(y_true, y_pred, num_classes)))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class recall over the classes that occur in y_true."""
    return float(_balanced_accuracy_cm(confusion_matrix(y_true, y_pred, num_classes)))


METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "balanced_accuracy": balanced_accuracy,
}


def _resampled_confusions(
    y_true: np.ndarray, preds: list[np.ndarray], num_classes: int, n_boot: int, seed: int
) -> Iterator[list[np.ndarray]]:
    """Yield, chunk by chunk, [b, C, C] confusion matrices of the same bootstrap resamples for each prediction vector."""
    n = len(y_true)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    cc = num_classes * num_classes
    codes = [y_true * num_classes + p for p in preds]
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        offsets = (np.arange(b) * cc)[:, None]
        yield [
            np.bincount((c[idx] + offsets).ravel(), minlength=b * cc).reshape(b, num_classes, num_classes)
            for c in codes
        ]
        done += b


def _resampled_values(
    y_true: np.ndarray, preds: list[np.ndarray], metric: str | MetricFn, num_classes: int, n_boot: int, seed: int
) -> list[np.ndarray]:
    """Metric values [n_boot] of each prediction vector on shared bootstrap resamples."""
    if isinstance(metric, str):
        if metric not in _FROM_CONFUSION:
            raise KeyError(f"unknown metric {metric!r}; known: {sorted(_FROM_CONFUSION)}")
        fn = _FROM_CONFUSION[metric]
        parts: list[list[np.ndarray]] = [[] for _ in preds]
        for cms in _resampled_confusions(y_true, preds, num_classes, n_boot, seed):
            for k, cm in enumerate(cms):
                parts[k].append(fn(cm))
        return [np.concatenate(p) if p else np.zeros(0) for p in parts]
    # A custom callable: no confusion-matrix shortcut, loop over resamples.
    rng = np.random.default_rng(seed)
    n = len(y_true)
    out = [np.empty(n_boot) for _ in preds]
    for i in range(n_boot):
        idx = rng.integers(0, n, size=n)
        for k, p in enumerate(preds):
            out[k][i] = metric(y_true[idx], p[idx], num_classes)
    return out


def _metric_value(y_true: np.ndarray, y_pred: np.ndarray, metric: str | MetricFn, num_classes: int) -> float:
    fn = METRICS[metric] if isinstance(metric, str) else metric
    return float(fn(y_true, y_pred, num_classes))


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    metric: str | MetricFn,
    num_classes: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """(point, low, high): the metric on the full test set and its percentile bootstrap (1 - alpha) interval.

    ``metric`` is a name in ``METRICS`` (vectorized) or a callable ``(y_true, y_pred, num_classes) -> float``.
    """
    t, p = _check(y_true, y_pred, num_classes)
    point = _metric_value(t, p, metric, num_classes)
    if len(t) == 0 or n_boot <= 0:
        return point, float("nan"), float("nan")
    (values,) = _resampled_values(t, [p], metric, num_classes, n_boot, seed)
    low, high = np.nanquantile(values, [alpha / 2, 1 - alpha / 2])
    return point, float(low), float(high)


@dataclass(frozen=True)
class PairedResult:
    """metric(a) - metric(b) on the test set, its bootstrap interval and a one-sided p-value.

    ``p_value`` is the fraction of bootstrap resamples in which a does *not* beat b
    (diff <= 0): a one-sided bootstrap test of "a is better than b". Small means a
    reliably wins; identical predictors give 1.0.
    """

    diff: float
    ci_low: float
    ci_high: float
    p_value: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_diffs(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric: str | MetricFn,
    num_classes: int,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float, np.ndarray]:
    """(metric(a), metric(b), diff, bootstrap diffs [n_boot]) with a and b scored on the same resamples."""
    t, a = _check(y_true, pred_a, num_classes)
    _, b = _check(y_true, pred_b, num_classes)
    va = _metric_value(t, a, metric, num_classes)
    vb = _metric_value(t, b, metric, num_classes)
    if len(t) == 0 or n_boot <= 0:
        return va, vb, va - vb, np.zeros(0)
    ra, rb = _resampled_values(t, [a, b], metric, num_classes, n_boot, seed)
    return va, vb, va - vb, ra - rb


def paired_bootstrap(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric: str | MetricFn,
    num_classes: int,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedResult:
    """Paired bootstrap comparison of two predictors on one test set (see ``PairedResult``).

    Both predictors are scored on the same resamples, so the shared difficulty of the
    resampled items cancels and the interval of the difference is much tighter than two
    independent intervals would suggest.
    """
    _, _, diff, diffs = paired_diffs(y_true, pred_a, pred_b, metric, num_classes, n_boot, seed)
    diffs = diffs[~np.isnan(diffs)]
    if diffs.size == 0:
        return PairedResult(diff, float("nan"), float("nan"), float("nan"))
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return PairedResult(float(diff), float(low), float(high), float(np.mean(diffs <= 0)))


def evaluate_predictions(
    y_true: np.ndarray,
    proba_or_pred: np.ndarray,
    num_classes: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, float]]:
    """{metric: {value, ci_low, ci_high}} for accuracy, macro_f1 and balanced_accuracy.

    All three intervals come from the same resamples (one batch of confusion matrices).
    """
    t, p = _check(y_true, proba_or_pred, num_classes)
    cm = confusion_matrix(t, p, num_classes)
    out: dict[str, dict[str, float]] = {
        name: {"value": float(fn(cm)), "ci_low": float("nan"), "ci_high": float("nan")}
        for name, fn in _FROM_CONFUSION.items()
    }
    if len(t) == 0 or n_boot <= 0:
        return out
    parts: dict[str, list[np.ndarray]] = {name: [] for name in _FROM_CONFUSION}
    for (cms,) in _resampled_confusions(t, [p], num_classes, n_boot, seed):
        for name, fn in _FROM_CONFUSION.items():
            parts[name].append(fn(cms))
    for name, chunks in parts.items():
        low, high = np.nanquantile(np.concatenate(chunks), [alpha / 2, 1 - alpha / 2])
        out[name]["ci_low"], out[name]["ci_high"] = float(low), float(high)
    return out


def check_metric(metric: str) -> str:
    """``metric`` if decisions may be made on it (``GATE_METRICS``), else a one-line error."""
    if metric not in GATE_METRICS:
        raise ValueError(f"gate metric must be one of {', '.join(GATE_METRICS)}, got {metric!r}")
    return metric


def json_safe(v: Any) -> Any:
    """numpy scalars to Python, NaN to None, recursively: what a strict JSON encoder accepts."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def paired_comparison(y_true: np.ndarray, candidate_pred: np.ndarray, other_pred: np.ndarray, num_classes: int,
                      metric: str, rule: str = "better", threshold: float = 0.0, confidence: float = 0.95,
                      n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """One paired comparison of candidate vs other on ``metric`` under a rule, as a plain dict.

    ``better`` passes when the one-sided lower ``confidence`` bound of the difference exceeds
    ``threshold``; ``not_worse`` passes unless the one-sided upper bound is below it.
    ``ci_low``/``ci_high`` are those two bounds; ``p_value`` is the share of resamples against
    the rule (diff <= 0 for ``better``, diff >= 0 for ``not_worse``); ``accuracy`` of both
    sides is reported whatever the metric."""
    if rule not in ("better", "not_worse"):
        raise ValueError(f"rule must be 'better' or 'not_worse', got {rule!r}")
    cand, other = as_pred(candidate_pred), as_pred(other_pred)
    vc, vo, diff, diffs = paired_diffs(y_true, cand, other, metric, num_classes, n_boot, seed)
    diffs = diffs[~np.isnan(diffs)]
    if diffs.size:
        low, high = (float(q) for q in np.quantile(diffs, [1 - confidence, confidence]))
        p_value = float(np.mean(diffs <= 0) if rule == "better" else np.mean(diffs >= 0))
    else:  # empty test set: no evidence, cannot pass
        low = high = p_value = float("nan")
    if rule == "better":
        passed = bool(low > threshold)  # NaN compares False
        verdict = "better" if passed else "not significantly better"
    else:
        passed = bool(high >= threshold)
        verdict = "not significantly worse" if passed else "significantly worse"
    acc = METRICS["accuracy"]
    return {"rule": rule, "metric": metric, "candidate": vc, "other": vo, "diff": diff, "ci_low": low,
            "ci_high": high, "threshold": float(threshold), "p_value": p_value, "verdict": verdict, "passed": passed,
            "accuracy": {"candidate": acc(y_true, cand, num_classes), "other": acc(y_true, other, num_classes)}}
