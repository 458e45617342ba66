"""Which images an anomaly model is fitted, calibrated and tested on.

Good images come either from a whole dataset version (every image is good: a new line's
first weeks) or from one class of a label snapshot (the other classes are the anomalies,
used only for testing). Good images of the training pool are split, by hashing their
content like the test split, into the images the memory bank is built from and the
held-out ones the threshold is calibrated on: a threshold set on the bank's own images
would be far too low (each of them has a distance-zero twin in the bank).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from components.evaluation.split import test_split

CALIBRATION_SALT = "dlvm-anomaly-calibration"


@dataclass
class AnomalySets:
    """Indices into the image array: ``fit`` and ``calibration`` hold good images only;
    ``test`` is empty when there are no labels (a dataset version of good images)."""

    fit: np.ndarray
    calibration: np.ndarray
    test: np.ndarray
    test_is_anomaly: np.ndarray


def _fit_and_calibration(pool: np.ndarray, shas: Sequence[str], calibration_fraction: float):
    if len(pool) < 2:
        raise ValueError(f"an anomaly model needs at least 2 good training images (to fit and to calibrate), "
                         f"got {len(pool)}")
    fit, cal = test_split([shas[i] for i in pool], np.zeros(len(pool), dtype=np.int64), calibration_fraction,
                          salt=CALIBRATION_SALT)
    return pool[fit], pool[cal]


def sets_from_good_images(shas: Sequence[str], calibration_fraction: float = 0.2) -> AnomalySets:
    """Every image is good: fit and calibrate only (nothing to test against)."""
    fit, cal = _fit_and_calibration(np.arange(len(shas)), shas, calibration_fraction)
    return AnomalySets(fit, cal, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))


def sets_from_labels(labels: np.ndarray, classes: Sequence[str], good_class: str, shas: Sequence[str],
                     train_idx: np.ndarray, test_idx: np.ndarray, calibration_fraction: float = 0.2) -> AnomalySets:
    """``good_class`` of a labeled set is normal: its training-pool images are fitted on and
    calibrated with; the fixed test split (all classes) tests, every other class an anomaly."""
    if good_class not in classes:
        raise ValueError(f"good class {good_class!r} is not a class of this snapshot (classes: {', '.join(classes)})")
    good = classes.index(good_class)
    fit, cal = _fit_and_calibration(train_idx[labels[train_idx] == good], shas, calibration_fraction)
    return AnomalySets(fit, cal, np.asarray(test_idx), labels[test_idx] != good)
