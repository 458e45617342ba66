"""benchmarks/elpv_dense_features.py: dense DAISY descriptors, VLAD-encoded against a codebook of
training descriptors, an RBF-SVM on top; scored beside the HOG-SVM baseline and fused with
elpv_recipe runs at a fixed weight, only runs of the same test split."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import elpv_recipe
from benchmarks.elpv_dense_features import dense_descriptors, main, vlad

SMALL = ["--subset", "64", "--clusters", "4", "--folds", "2", "--step", "24", "--jobs", "1"]


def test_vlad_sums_the_residuals_to_the_nearest_centre_and_normalizes():
    centres = np.array([[0.0, 0.0], [10.0, 10.0]], dtype=np.float32)
    descriptors = np.array([[1.0, 0.0], [0.0, 3.0], [11.0, 10.0]], dtype=np.float32)
    # residuals: centre 0 gets (1, 3), centre 1 gets (1, 0); signed square root, per-centre and
    # global L2 norm
    first = np.sqrt([1.0, 3.0]) / np.linalg.norm(np.sqrt([1.0, 3.0]))
    expected = np.concatenate([first, [1.0, 0.0]]) / np.sqrt(2)
    v = vlad(descriptors, centres)
    assert v == pytest.approx(expected, abs=1e-6)
    assert vlad(descriptors[::-1].copy(), centres) == pytest.approx(v, abs=1e-6)  # a bag: order-free


def test_dense_descriptors_cover_the_image_once_per_radius():
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    one = dense_descriptors(image, step=8, radii=(8,))
    two = dense_descriptors(image, step=8, radii=(8, 12))
    assert one.shape[1] == 104 and len(two) > len(one)
    assert one.min() >= 0 and (one ** 2).sum(1) == pytest.approx(1.0, abs=1e-4)  # Hellinger


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("elpv-dense")
    cache = str(folder / "cache")
    cnn = folder / "cnn.json"
    elpv_recipe.main(["--subset", "64", "--size", "32", "--epochs", "1", "--threads", "1", "--val", "0.2",
                      "--cache", cache, "--out", str(cnn)])
    out = main([*SMALL, "--cache", cache, "--cnn-runs", str(cnn), "--cnn-weight", "0.25",
                "--out", str(folder / "dense.json")])
    return folder, cnn, out


def test_the_dense_model_is_scored_fused_and_faced_with_the_hog_svm(runs):
    folder, cnn, out = runs
    assert json.loads((folder / "dense.json").read_text())["test"] == out["test"]
    y = np.array(out["test_labels"])
    dense = np.array(out["test_proba"])
    assert out["test"]["accuracy"]["value"] == pytest.approx(np.mean(dense.argmax(1) == y))
    fused = 0.25 * np.array(json.loads(cnn.read_text())["test_proba"]) + 0.75 * dense
    assert out["fused"]["test"]["accuracy"]["value"] == pytest.approx(np.mean(fused.argmax(1) == y), abs=1e-6)
    paired = out["versus"]["svm-hog"]["paired"]
    assert set(paired) == {"dense-vlad-svm", "fused"}
    assert paired["dense-vlad-svm"]["candidate"] == pytest.approx(out["test"]["accuracy"]["value"])
    assert paired["fused"]["other"] == pytest.approx(out["versus"]["svm-hog"]["test"]["accuracy"]["value"])


def test_runs_of_another_split_unknown_baselines_and_bad_weights_are_refused(runs):
    folder, cnn, _ = runs
    other = json.loads(cnn.read_text())
    other["test_key"] = "another-split"
    moved = folder / "other.json"
    moved.write_text(json.dumps(other))
    cache = ["--cache", str(folder / "cache")]
    with pytest.raises(SystemExit, match="another test split"):
        main([*SMALL, *cache, "--cnn-runs", str(moved)])
    with pytest.raises(SystemExit, match="unknown baseline svm-daisy"):
        main([*SMALL, *cache, "--versus", "svm-daisy"])
    with pytest.raises(SystemExit, match="--cnn-weight must be in"):
        main([*SMALL, *cache, "--cnn-weight", "1.5"])
