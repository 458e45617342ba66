"""Per-class logit offsets fitted on the validation split for the metric the gate decides on.

Why: a classifier trained with cross-entropy on imbalanced labels leans towards the common
classes when it is unsure. That is right for accuracy, but the gate decides on macro-F1 or
balanced accuracy by default, and those reward answering the rare classes more often (on
ELPV the fine-tuned CNNs never answer "likely defective", so that class scores an F1 of 0).
Adding a constant to each class's logit moves the decision boundaries without retraining.
The offsets are fitted on held-out *training* labels (the fine-tune's validation split,
never the test split) and folded into the head's bias, so prediction, export and serving use
them with no change.

The search is coordinate ascent over a fixed grid, class 0's offset held at 0 (only
differences between offsets change a decision), ties resolved towards the smaller offset:
on a small validation split a large offset that wins by nothing is noise.
"""
from __future__ import annotations

import numpy as np

from components.evaluation.metrics import GATE_METRICS, METRICS

OFFSET_GRID = np.round(np.linspace(-2.0, 2.0, 41), 2)  # nats: e^2 is a 7x odds change
MIN_VALIDATION = 50  # below this, offsets would fit the noise of a handful of images


def fit_class_offsets(log_probs: np.ndarray, labels: np.ndarray, num_classes: int, metric: str,
                      rounds: int = 3) -> tuple[np.ndarray, float, float]:
    """Offsets ``float32 [C]`` that maximize ``metric`` of ``argmax(log_probs + offsets)`` on
    ``labels``; also the metric's value before and after."""
    if metric not in GATE_METRICS:
        raise ValueError(f"metric must be one of {', '.join(GATE_METRICS)}; got {metric!r}")
    log_probs = np.asarray(log_probs, dtype=np.float64)
    labels = np.asarray(labels)
    if log_probs.shape != (len(labels), num_classes):
        raise ValueError(f"log_probs must be [{len(labels)}, {num_classes}], got {list(log_probs.shape)}")
    score_fn = METRICS[metric]

    def score(offsets: np.ndarray) -> float:
        return float(score_fn(labels, (log_probs + offsets).argmax(1), num_classes))

    offsets = np.zeros(num_classes)
    before = best = score(offsets)
    for _ in range(rounds):
        changed = False
        for c in range(1, num_classes):
            for value in OFFSET_GRID:
                trial = offsets.copy()
                trial[c] = value
                s = score(trial)
                if s > best + 1e-12 or (s >= best - 1e-12 and abs(value) < abs(offsets[c])):
                    best, offsets, changed = max(s, best), trial, changed or value != offsets[c]
        if not changed:
            break
    return offsets.astype(np.float32), before, best
