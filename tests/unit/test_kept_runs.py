"""components/training/kept_runs.py and the sweep's side of it: a full-label classifier kept by
the sweep is found by the candidate step only when every training input is the same, comes
back identical, and leaves nothing behind."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from components.evaluation.sweep import Backbone, SweepConfig, plan_units, run_unit
from components.models.descriptors import DescriptorConfig, fit_descriptor_state
from components.training.adapt import TTA_VIEWS, AdaptConfig, adapt, predict_proba
from components.training.kept_runs import keep_run, kept_runs_folder, take_run, training_key

SMALL = DescriptorConfig(img_size=48, step=6, radii=(6, 12), clusters=4, landmarks=24)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 48, 48), dtype=np.uint8)
    images[1::2, :, 23:25] = 0  # class 1: a dark line
    labels = np.arange(40) % 2
    state, _ = fit_descriptor_state(images, SMALL, TTA_VIEWS["flips"], progress=False)
    return images, labels, state


def test_the_key_changes_with_every_training_input(fitted):
    images, labels, state = fitted
    cfg = AdaptConfig(method="svm", tta="flips")
    key = training_key(SMALL, state, images, labels, 2, cfg)
    assert key == training_key(SMALL, {k: v.clone() for k, v in state.items()}, images.copy(), labels.copy(), 2, cfg)
    other_images = images.copy()
    other_images[0, 0, 0] ^= 1
    moved = {**state, "centres": state["centres"] + 1e-6}
    assert len({key, training_key(SMALL, state, other_images, labels, 2, cfg),
                training_key(SMALL, state, images, labels[::-1].copy(), 2, cfg),
                training_key(SMALL, moved, images, labels, 2, cfg),
                training_key(SMALL, state, images, labels, 3, cfg),
                training_key(SMALL, state, images, labels, 2, replace(cfg, seed=1)),
                training_key(SMALL, state, images, labels, 2, replace(cfg, svm_c=3.0)),
                training_key(replace(SMALL, landmarks=20), state, images, labels, 2, cfg)}) == 8


def test_a_kept_classifier_comes_back_identical_once_and_the_folder_goes(fitted, tmp_path):
    images, labels, state = fitted
    cfg = AdaptConfig(method="svm", tta="flips")
    clf = adapt(SMALL, state, images, labels, 2, cfg, progress=False)
    with kept_runs_folder(tmp_path / "cache") as folder:
        key = training_key(SMALL, state, images, labels, 2, cfg)
        keep_run(folder, key, clf)
        assert take_run(folder, "0" * 64) is None and take_run(None, key) is None
        back = take_run(folder, key)
        assert np.array_equal(predict_proba(back, images[:6]), predict_proba(clf, images[:6]))
        assert take_run(folder, key) is None  # taken once
        keep_run(folder, "left-over", clf)
    assert not folder.exists() and (tmp_path / "cache").is_dir()


def test_the_sweep_keeps_its_full_label_trained_runs_only(fitted, tmp_path):
    images, labels, state = fitted
    train_idx, test_idx = np.arange(30), np.arange(30, 40)
    svm = AdaptConfig(method="svm", tta="flips")
    cfg = SweepConfig(fractions=(0.5, 1.0), seeds=(0,), methods=("svm", "probe"), svm=svm, n_boot=10,
                      keep_dir=str(tmp_path))
    backbone = Backbone("cells-codebook:1", SMALL, state)
    for unit in plan_units([backbone], cfg):
        run_unit(unit, backbone, images, labels, train_idx, test_idx, 2, cfg)
    kept = list(tmp_path.glob("*.pt"))
    assert len(kept) == 1  # svm at 100 %; not at 50 %, not the probe
    key = training_key(SMALL, state, images[train_idx], labels[train_idx], 2, replace(svm, seed=0))
    assert kept[0].name == f"{key}.pt"
    again = adapt(SMALL, state, images[train_idx], labels[train_idx], 2, replace(svm, seed=0), progress=False)
    taken = take_run(tmp_path, key)
    assert torch.equal(taken.head.weight, again.head.weight)  # what the candidate would have trained
