"""The drift monitor's statistics on synthetic embeddings: its false-alarm rate stays at
or under the stated alpha for batches from the reference distribution, it fires on
shifted, rescaled and class-mix-changed batches, and refuses to judge tiny batches."""
from __future__ import annotations

import numpy as np
import pytest

from components.inference.drift import (
    DriftConfig,
    DriftReference,
    build_reference,
    compare_batch,
)

D, C = 24, 3


def _draw(rng, n: int, shift: float = 0.0, scale: float = 1.0, class_p=(0.5, 0.3, 0.2)):
    """Embeddings of a 3-class mixture (class means apart) and a softmax head's probabilities."""
    labels = rng.choice(C, size=n, p=class_p)
    means = np.eye(C, D) * 3.0
    emb = means[labels] + rng.normal(size=(n, D)) * scale + shift
    logits = emb[:, :C] * 1.5
    proba = np.exp(logits - logits.max(1, keepdims=True))
    return emb, proba / proba.sum(1, keepdims=True)


def _reference(rng, n: int = 400) -> DriftReference:
    basis, _ = _draw(rng, 600)
    emb, proba = _draw(rng, n)
    return build_reference(basis, emb, proba)


def test_false_alarm_rate_is_at_most_alpha_on_same_distribution_batches():
    rng = np.random.default_rng(0)
    cfg = DriftConfig(alpha=0.05, permutations=200)  # a larger alpha: enough alarms to count in 200 batches
    alarms = 0
    trials = 200
    for t in range(trials):
        reference = _reference(rng, 200) if t % 20 == 0 else reference  # noqa: F821 (set on the first trial)
        emb, proba = _draw(rng, 60)
        alarms += bool(compare_batch(reference, emb, proba, cfg)["alert"])
    # Bonferroni keeps the family-wise rate under alpha; allow binomial noise (sd ~ 1.5 % at 200 trials).
    assert alarms / trials <= cfg.alpha + 0.03, alarms


@pytest.mark.parametrize("change, fired", [
    (dict(shift=0.8), "embedding"),
    (dict(scale=2.0), "embedding"),
    (dict(class_p=(0.1, 0.2, 0.7)), "predicted-class mix"),
])
def test_shifted_batches_raise_an_alert_naming_the_test(change, fired):
    rng = np.random.default_rng(1)
    reference = _reference(rng)
    emb, proba = _draw(rng, 100, **change)
    report = compare_batch(reference, emb, proba)
    assert report["tested"] and report["alert"]
    assert any(t["fired"] and t["name"].startswith(fired) for t in report["tests"]), report["tests"]
    assert report["threshold"] == pytest.approx(report["alpha"] / len(report["tests"]))


def test_a_same_distribution_batch_passes_and_small_batches_are_not_judged():
    rng = np.random.default_rng(2)
    reference = _reference(rng)
    emb, proba = _draw(rng, 100)
    assert compare_batch(reference, emb, proba)["alert"] is False
    small = compare_batch(reference, emb[:5], proba[:5])
    assert small["tested"] is False and small["alert"] is None and "too few" in small["reason"]


def test_reference_round_trips_through_bytes_and_rejects_mismatched_batches():
    rng = np.random.default_rng(3)
    reference = _reference(rng, 50)
    again = DriftReference.from_bytes(reference.to_bytes())
    assert np.array_equal(again.projections, reference.projections) and again.num_classes == C
    emb, proba = _draw(rng, 30)
    with pytest.raises(ValueError, match="do not match"):
        compare_batch(again, emb[:, :10], proba)
