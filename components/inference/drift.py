"""Drift monitoring: does a prediction batch look like the data the model was trained on?

The reference is built once per model version from images of its own dataset version the
classifier never trained on (the label snapshot's test split, plus the version's unlabeled
images): their pooled embeddings, the classifier's confidence (top probability) and its
predicted-class mix. The directions the embeddings are tested along (the reference's top
principal components) are fitted on *other* images, the training pool, so the reference's
own projections stay exchangeable with fresh images from the same distribution.

A batch is compared with the reference by

* a two-sample Kolmogorov-Smirnov test per principal component of the embedding,
* a two-sample KS test of the confidence distribution,
* a permutation chi-square test of the predicted-class mix (exact for small counts),

and raises an alert when any test's p-value is below ``alpha / number of tests``
(Bonferroni). Each test is valid for a batch drawn from the reference's distribution, so
the chance that such a batch raises an alert -- the false-alarm rate -- is at most
``alpha`` (1 % by default) per batch; tests/unit/test_drift.py measures it.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class DriftConfig:
    alpha: float = 0.01  # family-wise false-alarm rate per batch
    n_components: int = 8  # principal components of the embedding tested
    min_batch: int = 20  # fewer images than this are not tested: too little evidence either way
    permutations: int = 2000  # for the class-mix test
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.n_components < 1 or self.min_batch < 2 or self.permutations < 100:
            raise ValueError("n_components >= 1, min_batch >= 2 and permutations >= 100 are needed")


@dataclass
class DriftReference:
    mean: np.ndarray  # [D] centre of the basis images' embeddings
    components: np.ndarray  # [k, D] principal directions (rows, unit length)
    projections: np.ndarray  # [n, k] the reference images' embeddings along them
    confidence: np.ndarray  # [n] the classifier's top probability on the reference images
    predicted: np.ndarray  # [n] its predicted class indices
    num_classes: int

    @property
    def n(self) -> int:
        return int(len(self.confidence))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, components=self.components, projections=self.projections,
                 confidence=self.confidence, predicted=self.predicted, num_classes=np.int64(self.num_classes))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "DriftReference":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["mean"], z["components"], z["projections"], z["confidence"], z["predicted"],
                       int(z["num_classes"]))


def build_reference(basis_embeddings: np.ndarray, embeddings: np.ndarray, proba: np.ndarray,
                    cfg: DriftConfig = DriftConfig()) -> DriftReference:
    """The reference from held-out images (``embeddings``, ``proba``) and directions fitted on
    ``basis_embeddings`` (other images of the same data: the training pool)."""
    basis = np.asarray(basis_embeddings, np.float64)
    emb = np.asarray(embeddings, np.float64)
    proba = np.asarray(proba, np.float64)
    if len(emb) < 2 or len(emb) != len(proba):
        raise ValueError(f"a drift reference needs at least 2 images with probabilities, got {len(emb)}/{len(proba)}")
    if len(basis) < 2:
        basis = emb  # nothing else to fit the directions on (a tiny dataset): fit on the reference itself
    mean = basis.mean(axis=0)
    _, _, vt = np.linalg.svd(basis - mean, full_matrices=False)
    k = min(cfg.n_components, vt.shape[0], emb.shape[1])
    components = vt[:k]
    return DriftReference(mean.astype(np.float32), components.astype(np.float32),
                          ((emb - mean) @ components.T).astype(np.float32), proba.max(axis=1).astype(np.float32),
                          proba.argmax(axis=1).astype(np.int64), int(proba.shape[1]))


def _class_mix_test(ref: np.ndarray, batch: np.ndarray, num_classes: int, permutations: int,
                    seed: int) -> tuple[float, float]:
    """(chi-square statistic, permutation p-value) for 'same predicted-class mix'."""
    pooled = np.concatenate([ref, batch])
    n_ref = len(ref)
    totals = np.bincount(pooled, minlength=num_classes).astype(np.float64)
    keep = totals > 0
    if keep.sum() < 2:
        return 0.0, 1.0  # one class only, in both: nothing can differ
    expected_ref = totals[keep] * n_ref / len(pooled)
    expected_batch = totals[keep] - expected_ref

    def chi2(ref_counts: np.ndarray) -> np.ndarray:
        batch_counts = totals[keep] - ref_counts
        return (((ref_counts - expected_ref) ** 2) / expected_ref).sum(-1) + \
               (((batch_counts - expected_batch) ** 2) / expected_batch).sum(-1)

    observed = chi2(np.bincount(ref, minlength=num_classes)[keep].astype(np.float64))
    rng = np.random.default_rng(seed)
    # Shuffled assignments of the pooled predictions to 'reference' (first n_ref) or 'batch',
    # in chunks of permutations at once (one bincount per chunk).
    counts = []
    chunk = max(1, 2_000_000 // len(pooled))
    for start in range(0, permutations, chunk):
        b = min(chunk, permutations - start)
        picked = pooled[rng.random((b, len(pooled))).argsort(axis=1)[:, :n_ref]]
        offsets = (np.arange(b) * num_classes)[:, None]
        counts.append(np.bincount((picked + offsets).ravel(), minlength=b * num_classes).reshape(b, num_classes))
    perm_counts = np.concatenate(counts)[:, keep].astype(np.float64)
    exceed = int((chi2(perm_counts) >= observed - 1e-9).sum())
    return float(observed), (1 + exceed) / (1 + permutations)


def compare_batch(reference: DriftReference, embeddings: np.ndarray, proba: np.ndarray,
               cfg: DriftConfig = DriftConfig()) -> dict:
    """The drift report of one batch: every test with its p-value and effect size, the
    Bonferroni threshold, and ``alert``. Batches under ``cfg.min_batch`` images are not tested
    (``tested`` False, ``alert`` None)."""
    emb = np.asarray(embeddings, np.float64)
    proba = np.asarray(proba, np.float64)
    report = {"tested": False, "alert": None, "alpha": cfg.alpha, "n_batch": int(len(emb)),
              "n_reference": reference.n, "tests": []}
    if len(emb) < cfg.min_batch:
        report["reason"] = f"{len(emb)} images: fewer than {cfg.min_batch}, too few to test"
        return report
    if emb.shape[1] != reference.components.shape[1] or proba.shape[1] != reference.num_classes:
        raise ValueError(f"batch embeddings {emb.shape} / probabilities {proba.shape} do not match the reference "
                         f"(D={reference.components.shape[1]}, C={reference.num_classes})")
    from scipy import stats  # here: scipy.stats costs every CLI command a second of imports

    projections = (emb - reference.mean) @ reference.components.T.astype(np.float64)
    tests = []
    for j in range(projections.shape[1]):
        ks = stats.ks_2samp(reference.projections[:, j], projections[:, j])
        tests.append({"name": f"embedding PC{j + 1}", "kind": "ks", "statistic": float(ks.statistic),
                      "p_value": float(ks.pvalue),
                      "reference_mean": float(reference.projections[:, j].mean()),
                      "batch_mean": float(projections[:, j].mean())})
    confidence = proba.max(axis=1)
    ks = stats.ks_2samp(reference.confidence, confidence)
    tests.append({"name": "confidence", "kind": "ks", "statistic": float(ks.statistic), "p_value": float(ks.pvalue),
                  "reference_mean": float(reference.confidence.mean()), "batch_mean": float(confidence.mean())})
    predicted = proba.argmax(axis=1).astype(np.int64)
    chi2, p = _class_mix_test(reference.predicted, predicted, reference.num_classes, cfg.permutations, cfg.seed)
    tests.append({"name": "predicted-class mix", "kind": "chi2-permutation", "statistic": chi2, "p_value": p,
                  "reference_mix": (np.bincount(reference.predicted, minlength=reference.num_classes)
                                    / reference.n).round(4).tolist(),
                  "batch_mix": (np.bincount(predicted, minlength=reference.num_classes) / len(predicted))
                  .round(4).tolist()})
    threshold = cfg.alpha / len(tests)
    for t in tests:
        t["fired"] = bool(t["p_value"] < threshold)
    report.update(tested=True, alert=any(t["fired"] for t in tests), threshold=threshold, tests=tests,
                  config=asdict(cfg))
    return report


def reference_images(data, manifest: dict, all_images: np.ndarray, cap: int = 2000
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(basis images, held-out images, labels of the test-split images) from a
    :class:`components.data.access.LabeledSet` and its dataset version's manifest and images.

    Held out = the snapshot's test split first, then the version's unlabeled images, ``cap``
    at most (the first ``len(labels)`` of them are the test split); basis = the training
    pool, ``cap`` at most. The classifier never trained on the held-out images."""
    labeled = set(data.paths)
    unlabeled = [i for i, rec in enumerate(manifest["images"]) if rec["path"] not in labeled]
    held_out = np.concatenate([data.images[data.test_idx], all_images[unlabeled]])[:cap]
    test_labels = data.labels[data.test_idx][:cap]
    return data.images[data.train_idx][:cap], held_out, test_labels
