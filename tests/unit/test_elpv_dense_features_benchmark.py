"""benchmarks/elpv_dense_features.py: the product's descriptor backbone fitted on the images
without labels, the svm method on the training split, one run per seed and their ensemble,
each faced with the HOG-SVM baseline on the same split (paired); with --novelty the same svm
with the functional training cells as its novelty bank beside it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.elpv_dense_features import main

SMALL = ["--subset", "64", "--size", "64", "--radii", "8,16", "--step", "8", "--clusters", "4", "--landmarks", "32",
         "--threads", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("elpv-dense")
    out = main([*SMALL, "--seeds", "0,1", "--cache", str(folder / "cache"), "--out", str(folder / "dense.json")])
    return folder, out


def test_each_seed_and_their_ensemble_are_scored_and_faced_with_the_hog_svm(run):
    folder, out = run
    assert json.loads((folder / "dense.json").read_text())["ensemble"] == out["ensemble"]
    y = np.array(out["test_labels"])
    probas = [np.array(r["test_proba"]) for r in out["runs"]]
    assert [r["seed"] for r in out["runs"]] == [0, 1]
    for r, p in zip(out["runs"], probas):
        assert r["test"]["accuracy"]["value"] == pytest.approx(np.mean(p.argmax(1) == y))
    ensemble = np.mean(probas, axis=0)
    assert out["ensemble"]["test"]["accuracy"]["value"] == pytest.approx(np.mean(ensemble.argmax(1) == y), abs=1e-6)
    paired = out["versus"]["svm-hog"]["paired"]
    assert set(paired) == {"seed 0", "seed 1", "seed ensemble"}
    assert paired["seed 1"]["candidate"] == pytest.approx(out["runs"][1]["test"]["accuracy"]["value"])
    assert paired["seed ensemble"]["other"] == pytest.approx(out["versus"]["svm-hog"]["test"]["accuracy"]["value"])
    assert out["backbone"]["family"] == "descriptor" and out["adapt"]["method"] == "svm"


def test_unknown_baselines_and_impossible_settings_are_refused(run):
    folder, _ = run
    cache = ["--cache", str(folder / "cache")]
    with pytest.raises(SystemExit, match="unknown baseline svm-daisy"):
        main([*SMALL, *cache, "--versus", "svm-daisy"])
    with pytest.raises(SystemExit, match="bad arguments: descriptor radius 40 does not fit a 64 px input"):
        main([*SMALL, *cache, "--radii", "40"])
    with pytest.raises(SystemExit, match="seed 0: .* fewer than the 5000 landmarks"):
        main([*SMALL, *cache, "--landmarks", "5000", "--seeds", "0"])


def test_novelty_adds_an_svm_per_seed_scored_and_paired_with_the_same_seed_without(run):
    folder, plain = run
    out = main([*SMALL, "--seeds", "0,1", "--novelty", "--versus", "", "--cache", str(folder / "cache")])
    y = np.array(out["test_labels"])
    for r, before in zip(out["runs"], plain["runs"]):
        assert r["test_proba"] == before["test_proba"]  # the svm without novelty is the same model
        p = np.array(r["novelty"]["test_proba"])
        assert p.shape == (len(y), 4) and np.allclose(p.sum(1), 1, atol=1e-4)
        assert r["novelty"]["test"]["accuracy"]["value"] == pytest.approx(np.mean(p.argmax(1) == y))
        assert "adapt_with_novelty" in r["seconds"] and not np.allclose(p, before["test_proba"], atol=1e-3)
    assert set(out["novelty_vs_without"]) == {"seed 0", "seed 1"}
    assert out["novelty_vs_without"]["seed 1"]["other"] == pytest.approx(out["runs"][1]["test"]["accuracy"]["value"])
    ensemble = np.mean([np.array(r["novelty"]["test_proba"]) for r in out["runs"]], axis=0)
    assert out["ensemble_novelty"]["test"]["accuracy"]["value"] == pytest.approx(np.mean(ensemble.argmax(1) == y),
                                                                                 abs=1e-6)
