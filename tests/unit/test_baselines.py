"""The sanity baselines every evaluation carries: they really learn (or, for the majority
class, really do not), CV sees only training labels, and large sets are subsampled for
kernel SVMs with the row saying so."""
from __future__ import annotations

import numpy as np
import pytest
from synthetic import banded_images

from components.evaluation.baselines import (
    SANITY_BASELINES,
    BaselineConfig,
    fit_predict,
)
from components.evaluation.metrics import evaluate_predictions


@pytest.fixture(scope="module")
def bands():
    images, labels = banded_images(240, num_classes=3, size=32, seed=0)
    return images[:180], labels[:180], images[180:], labels[180:]


@pytest.mark.parametrize("name", [n for n in SANITY_BASELINES if n != "majority"])
def test_classical_baselines_learn_the_bands(bands, name):
    train_x, train_y, test_x, test_y = bands
    proba, info = fit_predict(name, train_x, train_y, test_x, 3, BaselineConfig(pixel_size=16, hog_size=32))
    assert proba.shape == (60, 3) and np.allclose(proba.sum(axis=1), 1.0)
    assert evaluate_predictions(test_y, proba, 3)["balanced_accuracy"]["value"] > 0.9
    assert info["n_train"] == 180 and "C" in info


def test_majority_predicts_the_most_frequent_training_class():
    images, labels = banded_images(100, num_classes=2, size=16)
    labels = np.array([0] * 70 + [1] * 30)
    proba, info = fit_predict("majority", images, labels, images[:10], 2)
    assert info["class"] == 0 and (proba.argmax(axis=1) == 0).all() and np.allclose(proba[0], [0.7, 0.3])


def test_kernel_svm_trains_on_a_stratified_subsample_and_says_so(bands):
    train_x, train_y, test_x, _ = bands
    _, info = fit_predict("svm-pixels", train_x, train_y, test_x, 3, BaselineConfig(pixel_size=16, max_kernel_train=60))
    assert info["n_train"] == 60
    _, info = fit_predict("logreg-pixels", train_x, train_y, test_x, 3, BaselineConfig(pixel_size=16, max_kernel_train=60))
    assert info["n_train"] == 180  # linear models see every label


def test_a_class_absent_from_training_is_never_predicted():
    images, labels = banded_images(90, num_classes=3, size=16)
    keep = labels != 2
    proba, _ = fit_predict("logreg-pixels", images[keep], labels[keep], images, 3, BaselineConfig(pixel_size=16))
    assert proba.shape == (90, 3) and (proba.argmax(axis=1) != 2).all()


def test_unknown_names_and_metrics_are_refused():
    with pytest.raises(ValueError, match="unknown sanity baseline 'knn'"):
        fit_predict("knn", np.zeros((2, 8, 8), np.uint8), np.zeros(2), np.zeros((1, 8, 8), np.uint8), 2)
    with pytest.raises(ValueError, match="baseline metric must be one of"):
        BaselineConfig(metric="auroc")
