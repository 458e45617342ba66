"""benchmarks/cnn_reference.py end to end on a small ELPV subset: the split, the metrics and
the file it writes."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.cnn_reference import conv_net, main


def test_cnn_reference_trains_and_reports_on_the_75_25_split(tmp_path):
    out = tmp_path / "cnn.json"
    result = main(["--size", "32", "--epochs", "2", "--width", "4", "--elpv-images", "240", "--device", "cpu",
                   "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    # 75/25, stratified: a quarter of each class (rounded per class) is test
    assert result["train"] + result["test"] == 240 and abs(result["test"] - 60) <= 2
    assert sum(result["predicted_counts"]) == sum(result["true_counts"]) == result["test"]
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    for m in result["metrics_4class"].values():
        assert 0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1
    assert result["metrics_4class"]["accuracy"]["value"] == pytest.approx(result["history"][-1]["test_accuracy"], abs=1e-4)
    assert 0 <= result["accuracy_2class"] <= 1


def test_conv_net_shapes_and_bad_arguments():
    net = conv_net(4, 4).eval()
    assert net(torch.zeros(2, 1, 48, 48)).shape == (2, 4)
    with pytest.raises(SystemExit, match="--size must be >= 16"):
        main(["--size", "8"])
