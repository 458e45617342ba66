"""benchmarks/wm811k_finetune.py on a tiny synthetic file in the published WM-811K format: the
auto recipe's input for wafer maps (64 px behind a max-pool stem), a fine-tune from scratch or
from SimCLR on the unlabeled pool, and a clear refusal when the generic corpus is missing."""
from __future__ import annotations

import json

import pytest
from synthetic import write_wafer_npz

from benchmarks.wm811k_finetune import main

POOL = {"train_1": 12, "train_10": 16, "train_20": 8, "train_29": 8, "val": 8}


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "wm811k.npz"
    write_wafer_npz(path, {**POOL, "test": 18})
    return path


def run(tmp_path, npz, *extra: str) -> dict:
    return main(["--train", "train_1", "--epochs", "1", "--npz", str(npz), "--cache", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "out.json"), *extra])


def test_from_scratch_takes_the_auto_recipes_wafer_input(tmp_path, npz):
    out = run(tmp_path, npz)
    assert out["img_size"] == 64 and out["backbone"]["stem_pool"] and "size" not in out["overrides"]
    assert out["init"] == "scratch" and out["pretraining"] is None
    assert out["n_train"] == 12 and out["n_test"] == 18
    assert json.loads((tmp_path / "out.json").read_text())["test"] == json.loads(json.dumps(out["test"]))


def test_a_32_px_override_follows_the_recipes_pool_rule_unless_told(tmp_path, npz):
    out = run(tmp_path, npz, "--size", "32")  # the runs before the 64 px rule: no pool at 32 px
    assert out["img_size"] == 32 and not out["backbone"]["stem_pool"]
    assert set(out["overrides"]) == {"size", "stem_pool", "epochs"}
    pooled = run(tmp_path, npz, "--size", "32", "--stem-pool", "1")
    assert pooled["backbone"]["stem_pool"] and "stem_pool" not in pooled["overrides"]


def test_domain_simclr_pretrains_on_the_pool_never_the_test_maps(tmp_path, npz):
    out = run(tmp_path, npz, "--init", "domain-simclr", "--pretrain-steps", "2")
    assert out["init"] == "domain-simclr"
    assert out["pretraining"]["steps"] == 2 and out["pretraining"]["images"] == sum(POOL.values())


def test_a_missing_generic_corpus_is_named(tmp_path, npz):
    with pytest.raises(SystemExit, match="no generic corpus at .*nowhere"):
        run(tmp_path, npz, "--init", "generic-simclr", "--generic-corpus", str(tmp_path / "nowhere"))
