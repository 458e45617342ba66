"""benchmarks/elpv_recipe.py: runs keep their test probabilities, and runs of different seeds
combine into a seed ensemble that is the average of those probabilities, compared paired with
sanity baselines fitted on the same training split."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.elpv_recipe import main

TINY = ["--subset", "64", "--size", "32", "--epochs", "1", "--threads", "1", "--val", "0.2"]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("elpv-recipe")
    paths = []
    for seed in (0, 1):
        path = folder / f"seed{seed}.json"
        main([*TINY, "--seed", str(seed), "--cache", str(folder / "cache"), "--out", str(path)])
        paths.append(path)
    return folder, paths


def test_a_run_keeps_the_test_probabilities_it_was_scored_on(two_seeds):
    _, paths = two_seeds
    run = json.loads(paths[0].read_text())
    proba = np.array(run["test_proba"])
    assert proba.shape == (len(run["test_labels"]), 4)
    assert np.allclose(proba.sum(1), 1, atol=1e-4)
    hits = proba.argmax(1) == np.array(run["test_labels"])
    assert hits.mean() == pytest.approx(run["test"]["accuracy"]["value"])


def test_the_ensemble_averages_the_members_and_faces_the_baselines(two_seeds):
    folder, paths = two_seeds
    out = main(["--ensemble", *map(str, paths), "--versus", "majority,svm-hog", "--cache", str(folder / "cache"),
                "--out", str(folder / "ensemble.json")])
    runs = [json.loads(p.read_text()) for p in paths]
    mean = np.mean([r["test_proba"] for r in runs], axis=0)
    y = np.array(runs[0]["test_labels"])
    assert out["test"]["accuracy"]["value"] == pytest.approx(np.mean(mean.argmax(1) == y))
    assert [m["seed"] for m in out["members"]] == ["0", "1"]
    assert set(out["versus"]) == {"majority", "svm-hog"}
    for versus in out["versus"].values():
        paired = versus["paired"]
        assert paired["metric"] == "accuracy" and paired["candidate"] == pytest.approx(out["test"]["accuracy"]["value"])
        assert paired["other"] == pytest.approx(versus["test"]["accuracy"]["value"])
    assert json.loads((folder / "ensemble.json").read_text())["members"] == out["members"]


def test_runs_on_different_splits_or_unknown_baselines_are_refused(two_seeds):
    folder, paths = two_seeds
    other = json.loads(paths[1].read_text())
    other["test_key"] = "another-split"
    moved = folder / "other-split.json"
    moved.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="different test splits"):
        main(["--ensemble", str(paths[0]), str(moved)])
    with pytest.raises(SystemExit, match="unknown baseline svm-sift"):
        main(["--ensemble", *map(str, paths), "--versus", "svm-sift"])
