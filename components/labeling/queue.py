"""Which unlabeled images the labeling team should see first.

Uncertainty alone fills the queue with near-duplicates: fifty cells with the same crack
all sit at the decision boundary. So the queue is built in two steps:

1. **Uncertainty** of the production model on every unlabeled image: least confidence
   (1 - max p), margin (1 - (p1 - p2)) or normalized entropy; all in [0, 1], higher = less sure.
2. **Diversity**: from the ``pool_factor * k`` most uncertain images, a greedy pick that
   maximizes ``uncertainty * distance``, where distance is the cosine distance (in the
   model's feature space) to the nearest image already picked or already labeled. An
   exact duplicate of a picked image has distance 0 and is never picked next to it.

Input: probabilities ``[N, C]`` (or, for a detector, each image's box scores:
:func:`detection_uncertainty`) and features ``[N, D]`` of the unlabeled pool (and
optionally features of labeled images). Output: indices into the pool, queue order.
"""
from __future__ import annotations

import numpy as np

UNCERTAINTY_KINDS = ("least_confidence", "margin", "entropy")


def uncertainty(probs: np.ndarray, kind: str = "margin") -> np.ndarray:
    """Per-row uncertainty in [0, 1] (higher = the model is less sure)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be [N, C] with C >= 2, got shape {p.shape}")
    if kind == "least_confidence":
        # Rescaled so a uniform prediction scores 1 whatever the number of classes.
        return (1.0 - p.max(axis=1)) * p.shape[1] / (p.shape[1] - 1)
    if kind == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if kind == "entropy":
        safe = np.clip(p, 1e-12, 1.0)
        return -(p * np.log(safe)).sum(axis=1) / np.log(p.shape[1])
    raise ValueError(f"unknown uncertainty {kind!r} (choose from {', '.join(UNCERTAINTY_KINDS)})")


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a yes/no probability: 1 at 0.5, 0 at 0 and 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def detection_uncertainty(scores: list[np.ndarray]) -> np.ndarray:
    """Per image, the largest binary entropy of its candidate boxes' scores, in [0, 1].

    A detector's box score is its probability that an object is there: a box at 0.5 is a
    coin toss (entropy 1), a box at 0.99 or 0.01 is a decision (about 0.08). Why the
    *largest* over an image's boxes, not the mean or the sum: one doubtful defect is
    enough to make an image worth a human look, and in an image of confidently found defects
    plus low-score background peaks (the decoder keeps up to 100 peaks per image) the mean
    would average its one doubtful box away, while the sum would rank images by how many weak
    background peaks they have. Why scores rather than disagreement between the image and its
    horizontal flip: the scores come from the one pass the pre-annotations already make (the
    flip costs a second), and the detector is trained with flips, which pushes its two views
    toward agreement whether or not they are right.
    An image without candidate boxes scores 0: the detector saw nothing at all.
    The limit of the max: a detector early in training has weak peaks near 0.5 in almost
    every image, so nearly all images score close to 1 (0.81-1.0 over the 30 DeepPCB images
    of tests/integration/test_detection_label_studio.py after 150 steps) and the queue is
    decided mostly by the diversity step; it separates images once background peaks fall
    towards 0."""
    return np.array([float(binary_entropy(s).max()) if len(s) else 0.0 for s in scores], dtype=np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def select_queue(probs: np.ndarray, features: np.ndarray, k: int, kind: str = "margin",
                 labeled_features: np.ndarray | None = None, pool_factor: int = 5,
                 diversity: bool = True) -> list[int]:
    """The ``k`` pool indices to label first, in queue order (see the module docstring).

    With ``diversity=False`` the queue is plain uncertainty order (ties by index)."""
    if len(features) != len(probs):
        raise ValueError(f"{len(probs)} probability rows but {len(features)} feature rows")
    if k <= 0 or len(probs) == 0:
        return []
    return select_by_uncertainty(uncertainty(probs, kind), features, k, labeled_features, pool_factor, diversity)


def select_by_uncertainty(u: np.ndarray, features: np.ndarray, k: int, labeled_features: np.ndarray | None = None,
                          pool_factor: int = 5, diversity: bool = True) -> list[int]:
    """:func:`select_queue` from per-image uncertainties ``u`` in [0, 1] of any model (a
    classifier's :func:`uncertainty`, a detector's :func:`detection_uncertainty`)."""
    u = np.asarray(u, dtype=np.float64)
    n = len(u)
    if len(features) != n:
        raise ValueError(f"{n} uncertainties but {len(features)} feature rows")
    if k <= 0 or n == 0:
        return []
    by_uncertainty = np.argsort(-u, kind="stable")
    if not diversity:
        return [int(i) for i in by_uncertainty[:k]]
    candidates = by_uncertainty[: min(n, max(k, pool_factor * k))]
    z = _unit(features[candidates])
    # Distance of each candidate to the nearest labeled image (2 = as far as it gets).
    nearest = np.full(len(candidates), 2.0, dtype=np.float32)
    if labeled_features is not None and len(labeled_features):
        labeled = _unit(labeled_features)
        for start in range(0, len(labeled), 4096):
            sims = z @ labeled[start:start + 4096].T
            nearest = np.minimum(nearest, 1.0 - sims.max(axis=1))
    picked: list[int] = []
    available = np.ones(len(candidates), dtype=bool)
    cu = u[candidates]
    for _ in range(min(k, len(candidates))):
        gain = np.where(available, cu * np.maximum(nearest, 0.0), -np.inf)
        best = int(np.argmax(gain))
        if not np.isfinite(gain[best]) or gain[best] <= 0:
            # Everything left duplicates something picked or labeled: fall back to uncertainty.
            best = int(np.flatnonzero(available)[0])
        picked.append(best)
        available[best] = False
        nearest = np.minimum(nearest, 1.0 - z @ z[best])
    return [int(candidates[i]) for i in picked]
