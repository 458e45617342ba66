"""Evaluation: split, metrics, bootstrap statistics, promotion gate, sweep and reports."""
from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic import banded_images
from synthetic import fake_shas as _shas

from components.evaluation.gate import Comparator, promotion_gate
from components.evaluation.metrics import (
    METRICS,
    accuracy,
    balanced_accuracy,
    bootstrap_ci,
    evaluate_predictions,
    macro_f1,
    paired_bootstrap,
)
from components.evaluation.report import (
    label_efficiency,
    markdown_report,
    plot_curves,
    summary_table,
)
from components.evaluation.split import label_subset
from components.evaluation.split import test_split as make_test_split
from components.evaluation.sweep import (
    SweepConfig,
    SweepResult,
    checked_axes,
    make_subsets,
    plan_runs,
    score_run,
)
from components.training.recipes import tiny_adapt


def _noisy(y: np.ndarray, acc: float, num_classes: int, seed: int) -> np.ndarray:
    """Predictions equal to y with probability acc, otherwise a different class."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(y)) >= acc
    out = y.copy()
    out[wrong] = (y[wrong] + rng.integers(1, num_classes, wrong.sum())) % num_classes
    return out


# ----------------------------------------------------------------------------- split


def test_split_is_stratified_disjoint_and_complete():
    labels = np.array([0] * 40 + [1] * 20 + [2] * 6 + [3] * 2 + [4] * 1)
    shas = _shas(len(labels))
    train, test = make_test_split(shas, labels, test_fraction=0.25)
    assert np.intersect1d(train, test).size == 0
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    counts = {c: int((labels[test] == c).sum()) for c in range(5)}
    # round(0.25 * n): 10, 5, 2 (1.5 rounds up), 1 (0.5 -> at least 1), singleton stays in train
    assert counts == {0: 10, 1: 5, 2: 2, 3: 1, 4: 0}


def test_split_is_deterministic_and_independent_of_order():
    labels = np.array([0] * 30 + [1] * 30 + [2] * 12)
    shas = _shas(len(labels))
    _, test = make_test_split(shas, labels)
    test_shas = {shas[i] for i in test}
    perm = np.random.default_rng(7).permutation(len(labels))
    _, test_p = make_test_split([shas[i] for i in perm], labels[perm])
    assert {shas[perm[i]] for i in test_p} == test_shas
    # A different salt gives a different split (the salt really enters the hash).
    _, test_s = make_test_split(shas, labels, salt="other")
    assert {shas[i] for i in test_s} != test_shas
    # Adding images of another class does not move any existing image.
    more_labels = np.concatenate([labels, [3] * 8])
    _, test_m = make_test_split(shas + _shas(8, "new"), more_labels)
    assert {shas[i] for i in test_m if i < len(shas)} == test_shas


def test_split_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        make_test_split(_shas(3), [0, 1])


def test_label_subset_nested_stratified_and_seeded():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 4)
    train, _ = make_test_split(_shas(len(labels)), labels)
    prev = None
    for f in (0.05, 0.1, 0.25, 0.5, 1.0):
        sub = label_subset(train, labels, f, seed=3)
        assert set(sub.tolist()) <= set(train.tolist())
        assert set(np.unique(labels[sub]).tolist()) == {0, 1, 2}  # at least one per class
        if prev is not None:
            assert set(prev.tolist()) <= set(sub.tolist())
        prev = sub
    assert np.array_equal(label_subset(train, labels, 1.0, seed=0), train)
    a = label_subset(train, labels, 0.25, seed=1)
    assert np.array_equal(a, label_subset(train[::-1], labels, 0.25, seed=1))  # order of the pool is irrelevant
    assert not np.array_equal(a, label_subset(train, labels, 0.25, seed=2))
    n0 = int((labels[train] == 0).sum())
    assert int((labels[a] == 0).sum()) == int(np.floor(0.25 * n0 + 0.5))


# ----------------------------------------------------------------------------- metrics


def test_metrics_on_hand_computed_case():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 2, 2])
    # class 0: tp 2, support 3, predicted 2; class 1: 1, 2, 2; class 2: 1, 1, 2
    f1 = (2 * 2 / 5 + 2 * 1 / 4 + 2 * 1 / 3) / 3
    bal = (2 / 3 + 1 / 2 + 1 / 1) / 3
    for c in (3, 5):  # classes 3 and 4 absent from truth and predictions: no effect
        assert accuracy(y, p, c) == pytest.approx(4 / 6)
        assert macro_f1(y, p, c) == pytest.approx(f1)
        assert balanced_accuracy(y, p, c) == pytest.approx(bal)
    # A class predicted but never true counts in macro-F1 with F1 = 0, not in balanced accuracy.
    y2, p2 = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    assert macro_f1(y2, p2, 3) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert balanced_accuracy(y2, p2, 3) == pytest.approx((1 / 2 + 1) / 2)
    # Probabilities are accepted (argmax).
    proba = np.eye(3)[p] * 0.8 + 0.05
    assert accuracy(y, proba, 3) == pytest.approx(4 / 6)
    assert set(METRICS) == {"accuracy", "macro_f1", "balanced_accuracy"}
    with pytest.raises(ValueError):
        accuracy(y, np.array([0, 1, 5, 0, 0, 0]), 3)


def test_bootstrap_ci_contains_point_and_narrows_with_n():
    widths = []
    for n in (100, 3000):
        y = np.random.default_rng(n).integers(0, 3, n)
        p = _noisy(y, 0.8, 3, seed=n + 1)
        point, low, high = bootstrap_ci(y, p, "accuracy", 3, n_boot=1000, seed=0)
        assert low <= point <= high
        assert point == pytest.approx(accuracy(y, p, 3))
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(30) narrower
    # Deterministic per seed; a callable metric works too.
    y = np.random.default_rng(0).integers(0, 3, 200)
    p = _noisy(y, 0.7, 3, seed=1)
    assert bootstrap_ci(y, p, "macro_f1", 3, n_boot=300, seed=5) == bootstrap_ci(y, p, "macro_f1", 3, n_boot=300, seed=5)
    pt, lo, hi = bootstrap_ci(y, p, macro_f1, 3, n_boot=200, seed=5)
    assert lo <= pt <= hi and pt == pytest.approx(macro_f1(y, p, 3))


def test_evaluate_predictions_shape_and_consistency():
    y = np.random.default_rng(0).integers(0, 4, 300)
    proba = np.random.default_rng(1).random((300, 4))
    proba[np.arange(300), y] += 0.6
    out = evaluate_predictions(y, proba, 4, n_boot=500, seed=0)
    assert set(out) == {"accuracy", "macro_f1", "balanced_accuracy"}
    for name, m in out.items():
        assert m["value"] == pytest.approx(METRICS[name](y, proba, 4))
        assert m["ci_low"] <= m["value"] <= m["ci_high"]
    _, lo, hi = bootstrap_ci(y, proba, "accuracy", 4, n_boot=500, seed=0)
    assert (out["accuracy"]["ci_low"], out["accuracy"]["ci_high"]) == pytest.approx((lo, hi))


def test_paired_bootstrap_detects_better_and_not_same():
    y = np.random.default_rng(0).integers(0, 3, 400)
    good, bad = _noisy(y, 0.9, 3, 1), _noisy(y, 0.7, 3, 2)
    r = paired_bootstrap(y, good, bad, "accuracy", 3, n_boot=2000, seed=0)
    assert r.diff == pytest.approx(accuracy(y, good, 3) - accuracy(y, bad, 3))
    assert r.ci_low > 0 and r.p_value < 0.01
    rev = paired_bootstrap(y, bad, good, "accuracy", 3, n_boot=2000, seed=0)
    assert rev.p_value > 0.99 and rev.ci_high < 0
    same = paired_bootstrap(y, good, good.copy(), "macro_f1", 3, n_boot=500, seed=0)
    assert same.diff == 0 and same.ci_low == same.ci_high == 0 and same.p_value == 1.0
    # Two different predictors, each wrong on its own 80 of the 400 items: no evidence either way.
    perm = np.random.default_rng(5).permutation(400)
    a, b = y.copy(), y.copy()
    a[perm[:80]] = (y[perm[:80]] + 1) % 3
    b[perm[80:160]] = (y[perm[80:160]] + 2) % 3
    twin = paired_bootstrap(y, a, b, "accuracy", 3, n_boot=2000)
    assert twin.diff == 0
    assert twin.ci_low < 0 < twin.ci_high and 0.05 < twin.p_value < 0.95


# ----------------------------------------------------------------------------- gate


def test_promotion_gate_pass_fail_and_margin():
    y = np.random.default_rng(0).integers(0, 3, 500)
    cand, prod, generic = _noisy(y, 0.92, 3, 1), _noisy(y, 0.75, 3, 2), _noisy(y, 0.7, 3, 3)
    majority = Comparator("majority", "majority", np.zeros_like(y))

    def gate(candidate, others, **kw):
        return promotion_gate(y, candidate, [majority, *(Comparator(n, k, p) for n, k, p in others)], 3, **kw)

    res = gate(cand, [("production", "holder", prod), ("generic", "generic", generic)], margin=0.01)
    assert res.passed and set(res.comparisons) == {"majority", "production", "generic"}
    assert res.metric == "macro_f1"  # the default: a metric imbalance cannot game
    c = res.comparisons["production"]
    assert c["passed"] and c["ci_low"] > 0.01 and c["diff"] == pytest.approx(c["candidate"] - c["other"])
    json.dumps(res.to_dict(), allow_nan=False)  # JSON-able
    # A margin larger than the true gain fails, and the reason names the comparator.
    strict = gate(cand, [("production", "holder", prod)], margin=0.3)
    assert not strict.passed and "production" in strict.reason
    # Failing against one comparator fails overall.
    mixed = gate(cand, [("production", "holder", prod), ("twin", "holder", cand.copy())])
    assert not mixed.passed and mixed.comparisons["production"]["passed"] and not mixed.comparisons["twin"]["passed"]
    # Barely better than the other is not enough at 95 %: one extra correct item out of 500.
    nearly = prod.copy()
    nearly[np.flatnonzero(prod != y)[0]] = y[np.flatnonzero(prod != y)[0]]
    assert not gate(nearly, [("production", "holder", prod)], metric="accuracy").passed
    # Only the majority class to compare against: decided on it alone.
    alone = gate(cand, [])
    assert alone.passed and list(alone.comparisons) == ["majority"]


# ----------------------------------------------------------------------------- reports


def _synthetic_rows() -> list[dict]:
    curves = {
        "generic": [0.50, 0.60, 0.70, 0.76, 0.80],
        "domain": [0.70, 0.80, 0.84, 0.86, 0.88],
        "scratch": [0.40, 0.45, 0.50, 0.55, 0.60],
    }
    rows = []
    for b, vals in curves.items():
        for f, v in zip((0.05, 0.1, 0.25, 0.5, 1.0), vals):
            for s, jitter in zip((0, 1, 2), (-0.01, 0.0, 0.01)):  # seed mean == v
                m = {"value": v + jitter, "ci_low": v + jitter - 0.05, "ci_high": v + jitter + 0.05}
                rows.append({"backbone": b, "method": "probe", "fraction": f, "seed": s, "n_train": int(1000 * f),
                             "metrics": {"accuracy": m, "macro_f1": m, "balanced_accuracy": m}})
    return rows


def test_summary_table_and_label_efficiency():
    rows = _synthetic_rows()
    table = summary_table(rows)
    assert len(table) == 15
    d10 = next(t for t in table if t["backbone"] == "domain" and t["fraction"] == 0.1)
    assert d10["n_seeds"] == 3 and d10["metrics"]["accuracy"]["value"] == pytest.approx(0.80)
    assert d10["metrics"]["accuracy"]["ci_low"] == pytest.approx(0.75)
    assert d10["metrics"]["accuracy"]["seed_sd"] == pytest.approx(0.01)
    eff = label_efficiency(rows, "generic", ["domain", "scratch", "generic"])
    assert eff == {"domain": 0.1, "scratch": None, "generic": 1.0}
    assert label_efficiency(rows, "generic", ["domain"], method="probe") == {"domain": 0.1}
    with pytest.raises(ValueError):
        label_efficiency(rows, "generic", ["domain"], method="finetune")


def test_plot_and_markdown():
    rows = _synthetic_rows()
    png = plot_curves(rows, "accuracy")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert plot_curves(rows, "accuracy") == png  # deterministic bytes
    y = np.array([0, 1, 1, 0] * 10)
    gate = promotion_gate(y, y, [Comparator("majority", "majority", 0 * y)], 2).to_dict()
    md = markdown_report(rows, "ELPV label efficiency", {"dataset version": "elpv v3", "label snapshot": 7,
                                                          "test size": 656}, gate=gate, reference_backbone="generic")
    assert md.startswith("# ELPV label efficiency")
    assert "| model | 5 % | 10 % | 25 % | 50 % | 100 % |" in md and "| n_train | 50 | 100 | 250 | 500 | 1000 |" in md
    assert "| domain / probe | 0.700 (0.650–0.750) | 0.800 (0.750–0.850) |" in md
    assert "| generic / probe | 0.500 (0.450–0.550) | 0.600 (0.550–0.650) |" in md
    assert "**domain** reaches generic's 100 %-label accuracy (0.800, probe) with 10 % of the labels" in md
    assert "ratio 10x" in md and "**scratch** does not reach" in md
    assert "elpv v3" in md and "test size" in md and "PASSED" in md and "| majority | majority | better |" in md
    # No sanity baselines in these rows: the report says what that means.
    assert "## Sanity baselines" in md and "no candidate from it can pass the promotion gate" in md


# ----------------------------------------------------------------------------- sweep (logic)


def test_sweep_plan_subsets_rows_and_json_roundtrip():
    from components.models.vit import ViTConfig

    cfg = SweepConfig(fractions=(1.0, 0.1, 0.5), seeds=(0, 1), methods=("probe",), n_boot=200)
    assert cfg.fractions == (0.1, 0.5, 1.0)
    vit = ViTConfig(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    from components.evaluation.sweep import Backbone

    runs = plan_runs([Backbone("a", vit), Backbone("b", vit)], cfg)
    assert len(runs) == 2 * 1 * 3 * 2 and runs[0] == ("a", "probe", 0.1, 0)
    with pytest.raises(ValueError):
        plan_runs([Backbone("a", vit), Backbone("a", vit)], cfg)
    with pytest.raises(ValueError):
        SweepConfig(methods=("distill",))

    labels = np.random.default_rng(0).integers(0, 3, 120)
    train, test = make_test_split(_shas(120), labels)
    subsets = make_subsets(train, labels, cfg)
    assert set(subsets[(0.1, 0)].tolist()) <= set(subsets[(0.5, 0)].tolist()) <= set(train.tolist())

    y_test = labels[test]
    result = SweepResult(rows=[], train_idx=train, test_idx=test, y_test=y_test, num_classes=3)
    for i, key in enumerate(runs):
        proba = np.random.default_rng(i).random((len(test), 3)).astype(np.float32)
        result.test_proba[key] = proba
        result.rows.append(score_run(key, len(subsets[(key[2], key[3])]), y_test, proba, 3, cfg))
    text = result.to_json()
    assert text == result.to_json()
    back = SweepResult.from_json(text)
    assert back.rows == json.loads(text)["rows"]
    assert np.array_equal(back.test_idx, test) and np.array_equal(back.y_test, y_test)
    for key in runs:
        assert np.array_equal(back.pred(*key), result.pred(*key))
    assert back.to_json() == text


# ----------------------------------------------------------------------------- sweep (end to end)


def test_run_sweep_end_to_end_tiny_vit(monkeypatch):
    from components.evaluation.sweep import Backbone, run_sweep
    from components.models.vit import ViTConfig
    from components.training import adapt as learn

    vit = ViTConfig(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    images, labels = banded_images(48, 3, 16, seed=0)
    train, test = make_test_split(_shas(48), labels)
    other_state = learn.build_encoder(vit, None, seed=123).state_dict()
    backbones = [Backbone("scratch", vit, None), Backbone("other", vit, other_state, model_version_id=7)]
    # A fixed probe L2: the cross-validated choice costs seconds per probe on 2 CPU cores.
    cfg = SweepConfig(
        fractions=(0.25, 1.0), seeds=(0, 1), methods=("probe", "finetune"), n_boot=200,
        probe=tiny_adapt("probe", probe_l2=1e-2),
        finetune=tiny_adapt("finetune", epochs=1, probe_l2=1e-2),
        device="cpu",
    )

    # Count feature extractions (the real function is still what runs).
    calls = []
    real_extract = learn.extract_features
    monkeypatch.setattr(learn, "extract_features", lambda *a, **k: calls.append(len(a[1])) or real_extract(*a, **k))

    res = run_sweep(backbones, images, labels, train, test, 3, cfg, progress=False)
    n_lp_init = 2 * 2  # adapt() extracts features once per fine-tune run of a pretrained backbone (LP-FT head)
    assert len(calls) == 2 + n_lp_init and calls[:1] == [48]  # probes: once per backbone, train+test
    assert len(res.rows) == 2 * 2 * 2 * 2 == len(res.test_proba)
    assert np.array_equal(res.test_idx, test) and np.array_equal(res.y_test, labels[test])
    for row in res.rows:
        key = (row["backbone"], row["method"], row["fraction"], row["seed"])
        proba = res.test_proba[key]
        assert proba.shape == (len(test), 3) and np.allclose(proba.sum(1), 1, atol=1e-4)
        assert row["n_train"] == len(label_subset(train, labels, row["fraction"], row["seed"]))
        m = row["metrics"]["accuracy"]
        assert m["value"] == pytest.approx(accuracy(labels[test], proba, 3))
        assert m["ci_low"] <= m["value"] <= m["ci_high"]
    # The class signal is easy: a probe on the full train pool beats chance by far.
    assert res.rows[[r["method"] == "probe" and r["fraction"] == 1.0 for r in res.rows].index(True)][
        "metrics"]["accuracy"]["value"] > 0.6
    assert res.backbones[1] == {"name": "other", "model_version_id": 7,
                                "backbone_config": {**vit.to_dict(), "family": "vit"}}

    text = res.to_json()
    assert SweepResult.from_json(text).to_json() == text
    # Same inputs, same probes: the probe part of the sweep is deterministic.
    probe_only = SweepConfig(fractions=(0.25, 1.0), seeds=(0, 1), methods=("probe",), n_boot=200,
                             probe=tiny_adapt("probe", probe_l2=1e-2), device="cpu")
    again = run_sweep(backbones, images, labels, train, test, 3, probe_only, progress=False)
    for key, proba in again.test_proba.items():
        assert np.allclose(proba, res.test_proba[key], atol=1e-6)
    md = markdown_report(res.rows, "tiny", {"test size": len(test)}, reference_backbone="scratch")
    assert "other / finetune" in md


def test_finetune_can_run_on_a_subset_of_the_grid():
    from components.evaluation.sweep import Backbone, SweepConfig, plan_runs
    from components.models.vit import ViTConfig

    cfg = SweepConfig(fractions=(0.1, 0.5, 1.0), seeds=(0, 1), methods=("probe", "finetune"),
                      finetune_fractions=(1.0,), finetune_seeds=(0,))
    runs = plan_runs([Backbone("a", ViTConfig.tiny(32, 8), None)], cfg)
    assert [r for r in runs if r[1] == "finetune"] == [("a", "finetune", 1.0, 0)]
    assert len([r for r in runs if r[1] == "probe"]) == 6
    with pytest.raises(ValueError, match="finetune_fractions"):
        SweepConfig(fractions=(0.1,), finetune_fractions=(1.0,))


def test_backbone_sweep_axes_are_checked_sorted_and_deduplicated():
    assert checked_axes(["a", "b"], "scratch", [1.0, 0.1, 0.1], [2, 0]) == (["a", "b", "scratch"], [0.1, 1.0], [0, 2])
    assert checked_axes(["a"], None, [0.5], [0]) == (["a"], [0.5], [0])
    for args, message in ((([], None, [1.0], [0]), "nothing to compare"), ((["a", "a"], None, [1.0], [0]), "twice"),
                          ((["a"], None, [0.0], [0]), "fractions"), ((["a"], None, [1.5], [0]), "fractions"),
                          ((["a"], None, [], [0]), "fractions"), ((["a"], None, [1.0], [-1]), "seeds")):
        with pytest.raises(ValueError, match=message):
            checked_axes(*args)
