"""The promotion gate cannot be fooled by class imbalance: it decides on macro-F1 by default,
refuses a majority-class-level model whatever its accuracy looks like, refuses a model
significantly worse than the strongest sanity baseline, compares with the strongest run of
each kind, records every comparison; the label-efficiency ratio is only claimed against a
reference better than the majority class; the candidate's method is the one measured best."""
from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic import fake_shas as _shas

from components.evaluation.baselines import (
    BASELINE_BACKBONE,
    SANITY_BASELINES,
    BaselineConfig,
)
from components.evaluation.gate import (
    Comparator,
    describe,
    promotion_gate,
    strongest_comparators,
)
from components.evaluation.report import (
    beats_majority,
    choose_candidate,
    choose_candidate_method,
    efficiency_claim,
    markdown_report,
    summary_table,
)
from components.evaluation.split import test_split
from components.evaluation.sweep import (
    SweepConfig,
    SweepResult,
    plan_units,
    run_baseline_unit,
    score_run,
)

DOMAIN, GENERIC, SCRATCH = "domain-mae:1", "generic-mae:1", "scratch"
LAZY = "lazy-mae:1"  # a generic backbone whose only run predicts the majority class
BAND = 12


def _noisy(y: np.ndarray, acc: float, num_classes: int, seed: int) -> np.ndarray:
    """Predictions equal to y with probability acc, otherwise another class."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(y)) > acc
    return np.where(wrong, (y + rng.integers(1, num_classes, len(y))) % num_classes, y)


def _imbalanced_bands(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """70 % class 0, 30 % class 1, told apart by a faint band in heavy noise: the sanity
    baselines learn it, not perfectly, and always answering class 0 scores 0.7 accuracy."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    images = rng.integers(0, 160, size=(n, 16, 16)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, c * 8:c * 8 + 2] += BAND
    return images, labels


@pytest.fixture(scope="module")
def evaluation():
    """An evaluation's sweep results on a 70/30 set: the real sanity baselines fitted on the
    training split, beside stand-in runs of the domain, generic and from-scratch backbones."""
    images, labels = _imbalanced_bands()
    train, test = test_split(_shas(len(labels)), labels)
    cfg = SweepConfig(fractions=(0.5, 1.0), seeds=(0, 1), baselines=SANITY_BASELINES, n_boot=200,
                      baseline=BaselineConfig(pixel_size=16, hog_size=16, metric="macro_f1"))
    units = [u for u in plan_units([], cfg)]
    parts = [run_baseline_unit(u, images, labels, train, test, 2, cfg) for u in units]
    y_test = labels[test]
    result = SweepResult(rows=[], train_idx=train, test_idx=test, y_test=y_test, num_classes=2)
    for part in parts:
        result.rows += part.rows
        result.test_proba.update(part.test_proba)
    majority_like = np.zeros(len(test), dtype=np.int64)
    stand_ins = {  # (backbone, method): test accuracy of a noisy copy of the truth
        (DOMAIN, "probe"): 0.80, (DOMAIN, "finetune"): 0.99,
        (GENERIC, "probe"): 0.60, (GENERIC, "finetune"): 0.75,
        (SCRATCH, "probe"): None, (SCRATCH, "finetune"): 0.70,  # None: a majority-class predictor
        (LAZY, "probe"): None,
    }
    for i, ((backbone, method), acc) in enumerate(stand_ins.items()):
        pred = majority_like if acc is None else _noisy(y_test, acc, 2, seed=10 + i)
        key = (backbone, method, 1.0, 0)
        result.test_proba[key] = np.eye(2, dtype=np.float32)[pred]
        result.rows.append(score_run(key, len(train), y_test, result.test_proba[key], 2, cfg))
    return result


def test_every_baseline_runs_on_the_same_split_and_labels(evaluation):
    rows = [r for r in evaluation.rows if r["backbone"] == BASELINE_BACKBONE]
    # Default grid: every fraction, the first seed; each row says what was fitted.
    assert sorted((r["method"], r["fraction"], r["seed"]) for r in rows) == sorted(
        (b, f, 0) for b in SANITY_BASELINES for f in (0.5, 1.0))
    for r in rows:
        assert r["fit"]["n_train"] == r["n_train"] and set(r["metrics"]) == {"accuracy", "macro_f1", "balanced_accuracy"}
    full = {r["method"]: r["metrics"] for r in rows if r["fraction"] == 1.0}
    assert full["majority"]["accuracy"]["value"] == pytest.approx(np.mean(evaluation.y_test == 0))
    assert full["majority"]["balanced_accuracy"]["value"] == pytest.approx(0.5)
    assert max(full[b]["macro_f1"]["value"] for b in SANITY_BASELINES if b != "majority") > 0.7


def test_a_majority_level_model_with_respectable_accuracy_is_refused(evaluation):
    results = evaluation.to_dict()
    y = evaluation.y_test
    lazy = np.zeros(len(y), dtype=np.int64)
    lazy[np.flatnonzero(y == 1)[:2]] = 1  # two lucky minority hits: a notch above always-0
    assert (lazy == y).mean() > 0.7  # its accuracy looks respectable on a 70/30 set
    for metric in ("macro_f1", "balanced_accuracy", "accuracy"):
        # A negative margin cannot buy a majority-class-level model its way in, on any metric.
        gate = promotion_gate(y, lazy, strongest_comparators(results, DOMAIN, SCRATCH, metric), 2,
                              metric=metric, margin=-1.0, n_boot=500)
        assert not gate.passed, metric
        majority = gate.comparisons["majority: majority"]
        assert not majority["passed"] and majority["verdict"] == "not significantly better"
        assert majority["threshold"] == 0.0 and "majority: majority" in gate.reason
        sanity = next(c for c in gate.comparisons.values() if c["kind"] == "sanity")
        assert not sanity["passed"] and sanity["verdict"] == "significantly worse"


def test_a_good_candidate_passes_and_every_comparison_is_recorded(evaluation):
    results = evaluation.to_dict()
    y = evaluation.y_test
    good = y.copy()
    holder = _noisy(y, 0.75, 2, seed=99)
    comparators = strongest_comparators(results, DOMAIN, SCRATCH, "macro_f1") + [
        Comparator("holder: production v1", "holder", holder, "m:1")]
    gate = promotion_gate(y, good, comparators, 2, n_boot=500)
    assert gate.passed and gate.metric == "macro_f1", gate.reason
    assert [c["kind"] for c in gate.comparisons.values()] == ["majority", "sanity", "scratch", "generic", "holder"]
    # The strongest of each kind, not the weakest: scratch finetune beats the majority-level scratch probe,
    # the generic fine-tune beats the generic probe, the best classical model stands for all four.
    assert set(gate.comparisons) >= {"scratch: scratch (finetune)", "generic: generic-mae:1 (finetune)"}
    sanity_name = next(n for n, c in gate.comparisons.items() if c["kind"] == "sanity")
    best_classical = max((r for r in evaluation.rows if r["backbone"] == BASELINE_BACKBONE and r["fraction"] == 1.0
                          and r["method"] != "majority"), key=lambda r: r["metrics"]["macro_f1"]["value"])
    assert sanity_name == f"sanity: {best_classical['method']}"
    event = json.loads(json.dumps(gate.to_dict(), allow_nan=False))  # what the promotion event stores
    for name, c in event["comparisons"].items():
        assert {"kind", "rule", "source", "metric", "candidate", "other", "diff", "ci_low", "ci_high", "p_value",
                "threshold", "verdict", "passed", "accuracy"} <= set(c), name
        assert c["metric"] == "macro_f1" and c["ci_low"] <= c["diff"] <= c["ci_high"] and c["passed"]
        assert set(c["accuracy"]) == {"candidate", "other"}
        line = describe(name, c, gate.confidence)
        assert "\n" not in line and name in line and "accuracy" in line and line.startswith("PASS")
    assert event["candidate_metrics"]["accuracy"]["value"] == 1.0
    assert event["goal"]["met"] and event["goal"]["against"] in event["comparisons"]


def test_not_significantly_worse_is_enough_against_sanity_baselines_and_the_goal_says_more(evaluation):
    results = evaluation.to_dict()
    y = evaluation.y_test
    comparators = strongest_comparators(results, DOMAIN, SCRATCH, "macro_f1")
    sanity = next(c for c in comparators if c.kind == "sanity")
    generic = next(c for c in comparators if c.kind == "generic")
    # The candidate equals the best classical baseline: not worse (passes), not better (goal not met).
    twin = sanity.pred.copy()
    gate = promotion_gate(y, twin, [c for c in comparators if c.kind != "generic"], 2, n_boot=500)
    assert gate.passed and not gate.goal["met"], gate.reason
    assert gate.comparisons[sanity.name]["verdict"] == "not significantly worse"
    # A generic backbone must be beaten, not matched.
    same_as_generic = promotion_gate(y, generic.pred, comparators, 2, n_boot=500)
    assert not same_as_generic.comparisons[generic.name]["passed"]


def test_the_gate_needs_the_majority_baseline_and_a_known_metric(evaluation):
    y = evaluation.y_test
    with pytest.raises(ValueError, match="majority-class baseline"):
        promotion_gate(y, y, [Comparator("holder", "holder", y)], 2)
    with pytest.raises(ValueError, match="gate metric must be one of"):
        promotion_gate(y, y, [Comparator("m", "majority", 0 * y)], 2, metric="auroc")
    results = evaluation.to_dict()
    results["predictions"] = [p for p in results["predictions"] if p["backbone"] != BASELINE_BACKBONE]
    with pytest.raises(ValueError, match="no sanity baselines"):
        strongest_comparators(results, DOMAIN, SCRATCH, "macro_f1")


def test_every_report_shows_the_sanity_baselines(evaluation):
    md = markdown_report(evaluation.rows, "Label efficiency on bands", {}, efficiency_metric="macro_f1",
                         reference_backbone=GENERIC)
    for name in SANITY_BASELINES:
        assert f"| sanity / {name} |" in md
    assert "## Sanity baselines" in md and "Strongest sanity baseline on macro f1" in md
    assert "| scratch / finetune |" in md and "C " in md  # the fitted hyperparameters are shown
    assert "| model | 50 % | 100 % |" in md


def test_the_ratio_is_withheld_against_a_majority_level_reference(evaluation):
    results = evaluation.to_dict(include_proba=False)
    check = beats_majority(results, SCRATCH, "probe", "macro_f1")  # scratch / probe predicts the majority class
    assert not check["passed"] and check["diff"] == pytest.approx(0.0)
    md = markdown_report(evaluation.rows, "t", {}, reference_backbone=SCRATCH, efficiency_metric="macro_f1",
                         reference_check=check)
    assert "no label-efficiency ratio is given" in md and "ratio" not in md.split("no label-efficiency ratio")[1]
    good = beats_majority(results, GENERIC, "finetune", "macro_f1")
    assert good["passed"]
    # What the evaluate flow claims: nothing against a majority-level reference, a ratio otherwise.
    withheld = efficiency_claim(results, [DOMAIN, LAZY], DOMAIN, "macro_f1")
    assert withheld["reference"] == LAZY and not withheld["reference_check"]["passed"]
    assert withheld["label_efficiency"] == {}
    claimed = efficiency_claim(results, [DOMAIN, GENERIC, LAZY], DOMAIN, "macro_f1")
    assert claimed["reference"] == GENERIC and claimed["reference_check"]["passed"]
    assert claimed["label_efficiency"] == {DOMAIN: 1.0, LAZY: None}
    md = markdown_report(evaluation.rows, "t", {}, reference_backbone=GENERIC, efficiency_metric="macro_f1",
                         reference_check=good)
    assert "significantly better than the majority class" in md and "no label-efficiency ratio" not in md


def test_the_candidate_method_is_the_one_measured_best(evaluation):
    table = summary_table(evaluation.rows)
    method, why = choose_candidate_method(table, DOMAIN, "macro_f1")
    assert method == "finetune" and "finetune" in why and "probe" in why  # not always the probe
    assert choose_candidate_method(table, DOMAIN, "macro_f1", requested="probe")[0] == "probe"
    with pytest.raises(ValueError, match="no 100 %-label run"):
        choose_candidate_method(table, "nobody", "macro_f1")


def _full_label_table(scores: dict[tuple[str, str], tuple[float, float]]) -> list[dict]:
    return summary_table([{"backbone": b, "method": m, "fraction": 1.0, "seed": 0, "n_train": 10,
                           "metrics": {"macro_f1": {"value": v, "ci_low": lo, "ci_high": 2 * v - lo}}}
                          for (b, m), (v, lo) in scores.items()])


def test_the_pipeline_candidate_leaves_the_domain_backbone_only_for_a_clearly_better_one():
    clear = _full_label_table({(DOMAIN, "probe"): (0.38, 0.35), (DOMAIN, "finetune"): (0.45, 0.40),
                               (SCRATCH, "probe"): (0.33, 0.30), (SCRATCH, "finetune"): (0.54, 0.49),
                               (GENERIC, "finetune"): (0.60, 0.55)})
    backbone, method, why = choose_candidate(clear, [DOMAIN, SCRATCH], "macro_f1")
    # ELPV at the demo's budget: the domain start made models worse; the generic one is never a candidate
    assert (backbone, method) == (SCRATCH, "finetune") and "interval starts at 0.490" in why
    assert f"{DOMAIN} / finetune 0.450" in why
    within_noise = _full_label_table({(DOMAIN, "finetune"): (0.45, 0.40), (SCRATCH, "finetune"): (0.47, 0.42)})
    assert choose_candidate(within_noise, [DOMAIN, SCRATCH], "macro_f1")[:2] == (DOMAIN, "finetune")
    assert choose_candidate(clear, [DOMAIN, SCRATCH], "macro_f1", requested_method="probe")[:2] == (DOMAIN, "probe")
    with pytest.raises(ValueError, match="no 100 %-label run of nobody"):
        choose_candidate(clear, ["nobody", SCRATCH], "macro_f1")


def test_the_sweep_plans_and_runs_the_baselines_as_units_of_their_own():
    from components.evaluation.sweep import Backbone, plan_runs, run_sweep
    from components.models.vit import ViTConfig

    vit = ViTConfig(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    cfg = SweepConfig(fractions=(0.5, 1.0), seeds=(0, 1), baselines=("majority", "svm-hog"),
                      baseline_fractions=(1.0,), n_boot=50)
    runs = plan_runs([Backbone("a", vit)], cfg)
    assert runs[-2:] == [(BASELINE_BACKBONE, "majority", 1.0, 0), (BASELINE_BACKBONE, "svm-hog", 1.0, 0)]
    assert [u.runs for u in plan_units([Backbone("a", vit)], cfg)][-2:] == [(runs[-2],), (runs[-1],)]
    with pytest.raises(ValueError, match="names the sanity baselines"):
        plan_runs([Backbone(BASELINE_BACKBONE, vit)], cfg)
    with pytest.raises(ValueError, match="unknown sanity baselines"):
        SweepConfig(baselines=("knn",))
    with pytest.raises(ValueError, match="baseline_fractions"):
        SweepConfig(fractions=(0.5,), baselines=("majority",), baseline_fractions=(1.0,))
    images, labels = _imbalanced_bands(60)
    train, test = test_split(_shas(60), labels)
    only_majority = SweepConfig(fractions=(0.5, 1.0), seeds=(0, 1), baselines=("majority",), n_boot=50)
    result = run_sweep([], images, labels, train, test, 2, only_majority, progress=False)
    assert [(r["method"], r["fraction"], r["seed"]) for r in result.rows] == [("majority", 0.5, 0), ("majority", 1.0, 0)]
    assert (result.pred(BASELINE_BACKBONE, "majority", 1.0, 0) == 0).all()
    assert SweepResult.from_json(result.to_json()).rows[0]["fit"]["class"] == 0
